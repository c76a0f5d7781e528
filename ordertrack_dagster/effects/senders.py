"""Slack and S3 calls of the effects, turning each service's failures into DeliveryError.

Slack's 429 becomes a DeliveryDeferred carrying its Retry-After, so the message waits for
the time Slack asked for without counting as a failure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from http.client import HTTPException
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from ordertrack_dagster.couriers import parse_retry_after
from ordertrack_dagster.effects.delivery import DeliveryDeferred, DeliveryError

# Slack errors that concern the whole workspace connection, not the one message.
_SLACK_SERVICE_ERRORS = frozenset(
    {"not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired"}
)


def post_slack(client: WebClient, channel: str | None, text: str) -> int:
    """chat.postMessage; the HTTP status on success."""
    if not channel:
        raise DeliveryError("no Slack channel is configured for this message", transient=False)
    try:
        response = client.chat_postMessage(
            channel=channel, text=text, unfurl_links=False, unfurl_media=False
        )
    except SlackApiError as error:
        status = error.response.status_code
        reason = error.response.get("error") if isinstance(error.response.data, dict) else None
        if status == 429:
            headers = {k.lower(): v for k, v in (error.response.headers or {}).items()}
            retry_after = headers.get("retry-after")
            value = retry_after[0] if isinstance(retry_after, list) else retry_after
            resume = parse_retry_after(value, datetime.now(UTC))
            raise DeliveryDeferred(
                f"Slack rate limit: retry after {resume:%H:%M:%S}Z", resume, 429
            ) from None
        raise DeliveryError(
            f"Slack refused the message: HTTP {status} {reason or ''}".strip(),
            http_status=status,
            transient=status >= 500 or reason in _SLACK_SERVICE_ERRORS,
        ) from None
    except (OSError, HTTPException) as error:  # refused, reset or cut-off connections, timeouts
        raise DeliveryError(f"Slack unreachable: {error}") from None
    return int(response.status_code)


def put_and_presign(
    client: Any, bucket: str | None, key: str, body: bytes, content_type: str, days: int
) -> str:
    """Store the object and return a presigned GET link valid for `days`."""
    if not bucket:
        raise DeliveryError("AWS_S3_BUCKET is not set")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
        return str(
            client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=days * 86_400
            )
        )
    except (BotoCoreError, ClientError) as error:
        raise DeliveryError(f"S3 upload of {key} failed: {error}") from None
