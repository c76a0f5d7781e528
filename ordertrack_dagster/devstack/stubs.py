"""Local stand-ins for the Slack Web API and the CRM, recording everything they receive.

The tests, the demo and the benchmark talk to these over real HTTP, so the product's own
clients (slack_sdk, httpx) are exercised exactly as in production. What a stub received is
kept in an append-only journal and replayed at start, so restarting a stub on its port (an
outage in a test) does not lose the messages it had already accepted.

Run one with `python -m ordertrack_dagster.devstack.stubs slack|crm --port P ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

TOKEN_LIFETIME_SECONDS = 3600
#: How far a signed webhook's timestamp may be from the CRM's clock (replays are older).
SIGNATURE_TOLERANCE_SECONDS = 300

Record = dict[str, Any]


class _SimulatedOutage(Exception):
    """Raised to make uvicorn drop the connection mid-answer."""


class _DroppedConnection(Response):
    """Starts an answer, then drops the connection: what a crashing server looks like."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 502,
                "headers": [(b"content-length", b"1024")],
            }
        )
        raise _SimulatedOutage


def _dropped_if_down(fault: dict[str, Any] | None) -> Response | None:
    """Every stub's "down" fault: the connection dropped mid-answer."""
    return _DroppedConnection() if fault is not None and fault["kind"] == "down" else None


class _HideSimulatedOutages(logging.Filter):
    """Keeps the intended outages out of the stub's log, where they would read as bugs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _SimulatedOutage))


async def _read_params(request: Request) -> dict[str, Any]:
    """The request's parameters, from a JSON or url-encoded body plus the query string."""
    params: dict[str, Any] = dict(request.query_params)
    body = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict):
            raise ValueError("the body is not a JSON object")
        params.update(decoded)
    else:
        params.update(parse_qsl(body.decode()))
    return params


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


class _Stub:
    """Journal, fault injection and the admin routes shared by both stand-ins."""

    fault_kinds: frozenset[str] = frozenset()

    def __init__(self, journal: Path | None) -> None:
        self._journal = journal
        self._fault: dict[str, Any] = {}
        self._faults_left = 0
        self.clear()
        if journal is not None and journal.exists():
            for line in journal.read_text().splitlines():
                if line:
                    self.apply(json.loads(line))

    def clear(self) -> None:
        """Forget everything received."""
        raise NotImplementedError

    def apply(self, entry: Record) -> None:
        """Add one journal entry to the in-memory state."""
        raise NotImplementedError

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def record(self, entry: Record) -> None:
        self.apply(entry)
        if self._journal is not None:
            with self._journal.open("a") as journal:
                journal.write(json.dumps(entry) + "\n")

    def take_fault(self) -> dict[str, Any] | None:
        """The fault to inject into this request, if one is armed."""
        if self._faults_left <= 0:
            return None
        self._faults_left -= 1
        return self._fault

    async def _reset(self, request: Request) -> Response:
        self.clear()
        self._faults_left = 0
        if self._journal is not None:
            self._journal.write_text("")
        return JSONResponse({"ok": True})

    async def _set_faults(self, request: Request) -> Response:
        body = await request.json()
        kind, count = body.get("kind"), body.get("count", 1)
        if kind not in self.fault_kinds or not isinstance(count, int) or count < 0:
            return JSONResponse(
                {"error": f"expected kind in {sorted(self.fault_kinds)} and a count >= 0"},
                status_code=400,
            )
        self._fault, self._faults_left = body, count
        return JSONResponse({"kind": kind, "count": count})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                *self.routes(),
                Route("/_admin/reset", self._reset, methods=["POST"]),
                Route("/_admin/faults", self._set_faults, methods=["POST"]),
            ]
        )


class SlackStub(_Stub):
    """Slack Web API: `chat.postMessage` and `auth.test`, answering as Slack does.

    Faults (`500`, `ratelimited` with a `retry_after` in seconds, `down`) hit
    `chat.postMessage` only, one message per count.
    """

    fault_kinds = frozenset({"500", "ratelimited", "down"})

    def __init__(self, token: str, journal: Path | None = None) -> None:
        self._token = token
        self._last_ts = 0.0
        super().__init__(journal)

    def clear(self) -> None:
        self.messages: list[Record] = []

    def apply(self, entry: Record) -> None:
        self.messages.append(entry)
        self._last_ts = max(self._last_ts, float(entry["ts"]))

    def routes(self) -> list[Route]:
        return [
            Route("/api/chat.postMessage", self._post_message, methods=["GET", "POST"]),
            Route("/api/auth.test", self._auth_test, methods=["GET", "POST"]),
            Route("/api/{method}", self._unknown_method, methods=["GET", "POST"]),
            Route("/_admin/messages", self._list_messages, methods=["GET"]),
        ]

    async def _authorised_params(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        """The call's parameters, and Slack's answer when they cannot be read or the token is
        missing or wrong (None: go on)."""
        try:
            params = await _read_params(request)
        except ValueError:
            return {}, JSONResponse({"ok": False, "error": "invalid_json"})
        return params, self._auth_error(params, request)

    def _auth_error(self, params: dict[str, Any], request: Request) -> Response | None:
        token = _bearer(request) or params.get("token")
        if not token:
            return JSONResponse({"ok": False, "error": "not_authed"})
        if token != self._token:
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        return None

    def _next_ts(self) -> str:
        """Message timestamps are unique and increasing, as Slack's are within a channel."""
        self._last_ts = max(time.time(), self._last_ts + 0.000001)
        return f"{self._last_ts:.6f}"

    async def _post_message(self, request: Request) -> Response:
        fault = self.take_fault()
        if (dropped := _dropped_if_down(fault)) is not None:
            return dropped
        if fault is not None:
            if fault["kind"] == "ratelimited":
                retry_after = str(fault.get("retry_after", 1))
                return JSONResponse(
                    {"ok": False, "error": "ratelimited"},
                    status_code=429,
                    headers={"Retry-After": retry_after},
                )
            return JSONResponse({"ok": False, "error": "internal_error"}, status_code=500)
        params, refused = await self._authorised_params(request)
        if refused is not None:
            return refused
        channel = params.get("channel")
        if not channel:
            return JSONResponse({"ok": False, "error": "channel_not_found"})
        blocks, attachments = (_json_field(params, name) for name in ("blocks", "attachments"))
        text = params.get("text")
        if not (text or blocks or attachments):
            return JSONResponse({"ok": False, "error": "no_text"})
        message = {
            "channel": channel,
            "text": text,
            "blocks": blocks,
            "attachments": attachments,
            "thread_ts": params.get("thread_ts"),
            "ts": self._next_ts(),
        }
        self.record(message)
        answer = {"type": "message", "user": "U0ORDERBOT", "bot_id": "B0ORDERBOT", **message}
        return JSONResponse(
            {"ok": True, "channel": channel, "ts": message["ts"], "message": answer}
        )

    async def _auth_test(self, request: Request) -> Response:
        params, refused = await self._authorised_params(request)
        if refused is not None:
            return refused
        return JSONResponse(
            {
                "ok": True,
                "url": "https://ordertrack-dev.slack.com/",
                "team": "ordertrack dev",
                "user": "ordertrack",
                "team_id": "T0ORDERDEV",
                "user_id": "U0ORDERBOT",
                "bot_id": "B0ORDERBOT",
            }
        )

    async def _unknown_method(self, request: Request) -> Response:
        return JSONResponse({"ok": False, "error": "unknown_method"}, status_code=404)

    async def _list_messages(self, request: Request) -> Response:
        return JSONResponse({"messages": self.messages})


def _json_field(params: dict[str, Any], name: str) -> Any:
    """Form posts carry `blocks` and `attachments` as JSON text; JSON posts as values."""
    value = params.get(name)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class CrmStub(_Stub):
    """CRM: client-credentials tokens and the order-cancel webhook, deduplicated on
    `Idempotency-Key`.

    Faults (`500`, `timeout`, `down`) hit the webhook only. `timeout` waits `seconds`
    (default 20, beyond the product's 15 s timeout) and then accepts the call, as a slow
    CRM does: the client's retry must then come back as a duplicate.

    With a webhook secret it verifies signatures as `docs/security.md` tells the CRM to:
    a missing or wrong signature, or a timestamp more than five minutes off (a replay), is
    refused with 403 and recorded as refused.
    """

    fault_kinds = frozenset({"500", "timeout", "down"})

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        journal: Path | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        # the CRM's side of a rotation: every secret it accepts, comma-separated
        self._webhook_secrets = [
            secret.strip() for secret in (webhook_secret or "").split(",") if secret.strip()
        ]
        super().__init__(journal)

    def _signature_problem(self, request: Request, raw: bytes) -> str | None:
        """Why the call's signature is refused, or None (also when no secret is set)."""
        if not self._webhook_secrets:
            return None
        timestamp = request.headers.get("x-signature-timestamp", "")
        if not timestamp.isdigit():
            return "missing_signature"
        if abs(time.time() - int(timestamp)) > SIGNATURE_TOLERANCE_SECONDS:
            return "stale_signature"
        key = request.headers.get("idempotency-key", "")
        signed = f"{timestamp}.{key}.".encode() + raw
        received = [
            request.headers.get(header, "") for header in ("x-signature", "x-signature-previous")
        ]
        for secret in self._webhook_secrets:
            expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
            if any(hmac.compare_digest(expected, signature) for signature in received):
                return None
        return "invalid_signature"

    def clear(self) -> None:
        self.webhooks: list[Record] = []
        self.refusals: list[str] = []
        self._token_expiry: dict[str, float] = {}
        self._idempotency_keys: set[str] = set()

    def apply(self, entry: Record) -> None:
        if entry["kind"] == "token":
            self._token_expiry[entry["token"]] = entry["expires_at"]
            return
        self.webhooks.append(entry["webhook"])
        if entry["webhook"]["idempotency_key"]:
            self._idempotency_keys.add(entry["webhook"]["idempotency_key"])

    def routes(self) -> list[Route]:
        return [
            Route("/oauth/token", self._issue_token, methods=["POST"]),
            Route("/webhooks/order-cancel", self._order_cancel, methods=["POST"]),
            Route("/_admin/webhooks", self._list_webhooks, methods=["GET"]),
            Route("/_admin/tokens", self._count_tokens, methods=["GET"]),
        ]

    async def _issue_token(self, request: Request) -> Response:
        try:
            params = await _read_params(request)
        except ValueError:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        if params.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if (params.get("client_id"), params.get("client_secret")) != (
            self._client_id,
            self._client_secret,
        ):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        token = secrets.token_urlsafe(24)
        self.record(
            {"kind": "token", "token": token, "expires_at": time.time() + TOKEN_LIFETIME_SECONDS}
        )
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME_SECONDS}
        )

    async def _order_cancel(self, request: Request) -> Response:
        fault = self.take_fault()
        if (dropped := _dropped_if_down(fault)) is not None:
            return dropped
        if fault is not None and fault["kind"] == "500":
            return JSONResponse({"error": "internal server error"}, status_code=500)
        # Read the request before any delay: a slow CRM has it even if the client gives up.
        raw = await request.body()
        if fault is not None:
            await asyncio.sleep(float(fault.get("seconds", 20)))
        token = _bearer(request)
        if token is None or self._token_expiry.get(token, 0.0) < time.time():
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        refused = self._signature_problem(request, raw)
        if refused is not None:
            self.refusals.append(refused)
            return JSONResponse({"error": refused}, status_code=403)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        key = request.headers.get("idempotency-key")
        status = "duplicate" if key and key in self._idempotency_keys else "accepted"
        webhook = {
            "received_at": _now_iso(),
            "status": status,
            "idempotency_key": key,
            "signature": request.headers.get("x-signature"),
            "body": body,
        }
        self.record({"kind": "webhook", "webhook": webhook})
        return JSONResponse({"status": status})

    async def _list_webhooks(self, request: Request) -> Response:
        return JSONResponse({"webhooks": self.webhooks, "refused": self.refusals})

    async def _count_tokens(self, request: Request) -> Response:
        return JSONResponse({"issued": len(self._token_expiry)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--journal", type=Path, help="keeps what was received across restarts")
    stubs = parser.add_subparsers(dest="stub", required=True)
    slack = stubs.add_parser("slack", help="Slack Web API")
    slack.add_argument("--token", required=True)
    crm = stubs.add_parser("crm", help="CRM token endpoint and order-cancel webhook")
    crm.add_argument("--client-id", required=True)
    crm.add_argument("--client-secret", required=True)
    crm.add_argument(
        "--webhook-secret",
        help="verify X-Signature (or X-Signature-Previous) with this secret; comma-separated, "
        "any of them",
    )
    args = parser.parse_args(argv)

    stub: _Stub = (
        SlackStub(args.token, args.journal)
        if args.stub == "slack"
        else CrmStub(args.client_id, args.client_secret, args.journal, args.webhook_secret)
    )
    logging.getLogger("uvicorn.error").addFilter(_HideSimulatedOutages())
    uvicorn.run(stub.app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
