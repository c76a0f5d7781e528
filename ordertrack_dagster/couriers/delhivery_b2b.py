"""Delhivery B2B (LTL) tracking: one LR number a GET, with a JWT from a login.

Client, answer parsing and mapping in one place. The mapping is contract §5's Delhivery legacy
table (shared with the express module); the answer carries only the latest status.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ordertrack_dagster.couriers.answers import first_entry, parse_courier_time, read_status
from ordertrack_dagster.couriers.delhivery import DELHIVERY_BLOCK_SECONDS, LEGACY_TABLE
from ordertrack_dagster.couriers.description import CourierDescription, login_settings
from ordertrack_dagster.couriers.engine import Request
from ordertrack_dagster.couriers.failures import BatchFailure, NotAnswered
from ordertrack_dagster.couriers.login import LoginClient, LoginResource, token_at
from ordertrack_dagster.records import Interpretation, OrderContext, Outcome
from ordertrack_dagster.resources.state import CachedToken
from ordertrack_dagster.statuses import Canonical

TOKEN_LIFETIME = timedelta(hours=24)
NOT_FOUND_CODE = "404"


def interpret(answer: Any, order: OrderContext, now: datetime) -> Interpretation:
    """Read one LR's answer: `data.status`, else `wbns[0].status`, at `wbns[0].scan_timestamp`.

    A cancelled LR answers `data` as a sentence saying so; `courier_status` keeps it as sent.
    """
    data = answer.get("data") if isinstance(answer, dict) else None
    if isinstance(data, str):
        if "cancel" in data.casefold():
            return Interpretation(
                Outcome.MAPPED, courier_status=data, status=Canonical.BOOKING_CANCELLED
            )
        return Interpretation(Outcome.UNMAPPED, courier_status=data, alert=f"unmapped {data!r}")
    if not isinstance(data, dict):
        return Interpretation(Outcome.FAILED, alert="malformed answer: no data object")
    piece = first_entry(data.get("wbns"))
    return read_status(
        [(data.get("status"), LEGACY_TABLE), (piece.get("status"), LEGACY_TABLE)],
        parse_courier_time(piece.get("scan_timestamp")),
    )


class DelhiveryB2BClient(LoginClient):
    token_name = "delhivery_b2b"
    login_block_seconds = 600.0  # a wrong password locks the user for 10 minutes
    min_refresh_seconds = 30.0
    block_statuses = frozenset({403})  # the same firewall as the express APIs
    block_seconds = DELHIVERY_BLOCK_SECONDS

    def login_request(self, username: str, password: str) -> Request:
        return Request(
            "POST", f"{self.url}/ums/login", json={"username": username, "password": password}
        )

    def read_login(self, payload: Any, now: datetime) -> CachedToken | None:
        jwt = token_at(payload, "data", "jwt")
        return None if jwt is None else CachedToken(jwt, now + TOKEN_LIFETIME)

    def token_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def build_request(self, keys: Sequence[str]) -> Request:
        return Request("GET", f"{self.url}/lrn/track", params={"lrnum": keys[0]})

    def split_answer(self, keys: Sequence[str], payload: Any) -> dict[str, Any]:
        """The whole answer belongs to the one LR asked; "not found" comes as 404 or 200."""
        if not isinstance(payload, dict):
            raise BatchFailure("unexpected answer shape (not an object)", retryable=False)
        if payload.get("success") is False:
            error = payload.get("error")
            details = error if isinstance(error, dict) else {"message": error}
            if str(details.get("code")) == NOT_FOUND_CODE:
                raise NotAnswered(str(details.get("message") or "Data not found."))
            raise BatchFailure(f"courier error: {details.get('message')!r}", retryable=False)
        if "data" not in payload:
            raise BatchFailure("unexpected answer shape (no data)", retryable=False)
        return {keys[0]: payload}


class DelhiveryB2BResource(LoginResource):
    """Delhivery's LTL tracking API (login with a username and password)."""

    client_class = DelhiveryB2BClient


DESCRIPTION = CourierDescription(
    resource_key="delhivery_b2b",
    resource_class=DelhiveryB2BResource,
    settings=login_settings("DELHIVERY_B2B"),
    interpreters={"delhivery_b2b": interpret},
)
