"""The CRM (contract §7): a client-credentials token and the RTO cancel-order webhook.

The token is cached in memory for the run and in `ordertrack_state` until it expires, so
runs do not ask for a new one each time. Every call carries the outbox document's
idempotency key, and the body is signed when a webhook secret is configured: the signature
covers a timestamp, the idempotency key and the body, so the CRM can refuse a replayed or
altered call (`docs/security.md` shows how to verify it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from dagster import ConfigurableResource
from pydantic import Field

from ordertrack_dagster.effects.delivery import DeliveryError
from ordertrack_dagster.resources.state import CachedToken, SharedState
from ordertrack_dagster.security.redaction import http_error_text, remember_secret

TOKEN_NAME = "crm"
DEFAULT_TOKEN_SECONDS = 3600.0
TOKEN_MARGIN = timedelta(seconds=60)


SIGNATURE_HEADER = "X-Signature"
#: During a rotation, the signature by the previous secret, so the CRM accepts the call
#: whether it already knows the new secret or still only the old one.
PREVIOUS_SIGNATURE_HEADER = "X-Signature-Previous"
TIMESTAMP_HEADER = "X-Signature-Timestamp"


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent, so the signature is computed over what the CRM receives.

    A value JSON has no type for (a BSON type that slipped through) is sent as its text.
    """
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def sign(secret: str, timestamp: int, idempotency_key: str, body: bytes) -> str:
    """X-Signature: hex HMAC-SHA256 of `<timestamp>.<idempotency key>.<body>`."""
    message = f"{timestamp}.{idempotency_key}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_headers(
    secrets: str, timestamp: int, idempotency_key: str, body: bytes
) -> dict[str, str]:
    """The signature headers of one attempt. `secrets` is CRM_WEBHOOK_SECRET: the current
    secret, then (while a rotation lasts) the previous one after a comma."""
    current, *previous = [secret.strip() for secret in secrets.split(",") if secret.strip()]
    headers = {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(current, timestamp, idempotency_key, body),
    }
    if previous:
        headers[PREVIOUS_SIGNATURE_HEADER] = sign(previous[0], timestamp, idempotency_key, body)
    return headers


def _transport_error(what: str, error: httpx.TransportError) -> DeliveryError:
    return DeliveryError(f"{what}: {http_error_text(error)}")


class CrmResource(ConfigurableResource):
    """The CRM's token endpoint and order-cancel webhook (CRM_* settings)."""

    webhook_url: str | None = Field(default=None, description="CRM_WEBHOOK_URL")
    auth_url: str | None = Field(default=None, description="CRM_AUTH_URL")
    client_id: str | None = Field(default=None, description="CRM_CLIENT_ID")
    client_secret: str | None = Field(default=None, description="CRM_CLIENT_SECRET")
    webhook_secret: str | None = Field(
        default=None,
        description="CRM_WEBHOOK_SECRET: when set, X-Signature signs each body; "
        "`new,previous` during a rotation also signs X-Signature-Previous",
    )
    timeout_seconds: float = Field(
        default=15.0, description="per request, in all: a trickling answer is cut off too"
    )

    @contextmanager
    def open(self, tokens: SharedState | None = None) -> Iterator[CrmClient]:
        """A client for one run; `tokens` shares the cached token across runs."""
        loop = asyncio.new_event_loop()
        http = httpx.AsyncClient(timeout=self.timeout_seconds)
        try:
            yield CrmClient(self, _Deadlined(http, loop, self.timeout_seconds), tokens)
        finally:
            loop.run_until_complete(http.aclose())
            loop.close()


class _Deadlined:
    """POSTs that end within a total deadline, whatever the server does.

    httpx's time-outs bound each read; a server sending one byte every few seconds never
    trips them. Each call here is cancelled once `seconds` have passed since it began.
    """

    def __init__(self, http: httpx.AsyncClient, loop: asyncio.AbstractEventLoop, seconds: float):
        self._http = http
        self._loop = loop
        self._seconds = seconds

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        call = asyncio.wait_for(self._http.post(url, **kwargs), self._seconds)
        try:
            return self._loop.run_until_complete(call)
        except TimeoutError:
            raise httpx.TimeoutException(f"no complete answer within {self._seconds:g} s") from None


class CrmClient:
    def __init__(self, settings: CrmResource, http: _Deadlined, tokens: SharedState | None):
        self._settings = settings
        self._http = http
        self._tokens = tokens
        self._token: CachedToken | None = None
        # one failed token request per run: the rest of the run fails fast instead of retrying
        self._token_error: DeliveryError | None = None

    def _access_token(self, refresh: bool) -> str:
        if self._token_error is not None:
            raise self._token_error
        if not refresh:
            if self._token and self._token.expires_at - datetime.now(UTC) > TOKEN_MARGIN:
                return self._token.token
            stored = self._tokens.cached_token(TOKEN_NAME) if self._tokens else None
            if stored is not None:
                self._token = stored
                return stored.token
        try:
            self._token = self._request_token()
        except DeliveryError as error:
            self._token_error = error
            raise
        if self._tokens is not None:
            self._tokens.save_token(TOKEN_NAME, self._token)
        return self._token.token

    def _request_token(self) -> CachedToken:
        settings = self._settings
        if not (settings.auth_url and settings.client_id and settings.client_secret):
            raise DeliveryError("CRM_AUTH_URL, CRM_CLIENT_ID or CRM_CLIENT_SECRET is not set")
        body = {
            "client_id": settings.client_id,
            "client_secret": settings.client_secret,
            "grant_type": "client_credentials",
        }
        try:
            response = self._http.post(settings.auth_url, json=body)
        except httpx.TimeoutException:
            raise DeliveryError("CRM token request timed out") from None
        except httpx.TransportError as error:
            raise _transport_error("CRM token request failed", error) from None
        if response.status_code != 200:
            raise DeliveryError(
                f"CRM token request refused: HTTP {response.status_code}",
                http_status=response.status_code,
            )
        try:
            answer = response.json()
            token = str(answer["access_token"])
            seconds = float(answer.get("expires_in") or DEFAULT_TOKEN_SECONDS)
        except (ValueError, KeyError, TypeError):
            raise DeliveryError("CRM token answer has no access_token") from None
        remember_secret(token)
        return CachedToken(token, datetime.now(UTC) + timedelta(seconds=seconds))

    def send_rto(self, payload: Mapping[str, Any], idempotency_key: str) -> int:
        """POST the webhook; the HTTP status on 2xx, DeliveryError otherwise.

        A 401 means the cached token was revoked or expired early: one fresh token, one retry.
        """
        settings = self._settings
        if not settings.webhook_url:
            raise DeliveryError("CRM_WEBHOOK_URL is not set")
        body = encode_body(payload)
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        for attempt in range(2):
            token = self._access_token(refresh=attempt > 0)
            if settings.webhook_secret:  # signed per attempt: a retry carries a fresh time
                headers |= signature_headers(
                    settings.webhook_secret, int(time.time()), idempotency_key, body
                )
            try:
                response = self._http.post(
                    settings.webhook_url,
                    content=body,
                    headers={**headers, "Authorization": f"Bearer {token}"},
                )
            except httpx.TimeoutException:
                raise DeliveryError(
                    f"CRM webhook timed out after {settings.timeout_seconds:g} s"
                ) from None
            except httpx.TransportError as error:
                raise _transport_error("CRM webhook unreachable", error) from None
            if response.status_code != 401 or attempt:
                break
        status = response.status_code
        if 200 <= status < 300:
            return status
        raise DeliveryError(
            f"CRM webhook answered HTTP {status}",
            http_status=status,
            transient=status >= 500 or status in (401, 408, 429),
        )
