"""Velocity tracking: up to 45 AWBs a POST, with ONE token shared by every worker and run.

A Velocity login revokes every older token and five failed logins lock the account, so the
token lives in `ordertrack_state` with its expiry; on a 401 the stored token is re-read
first (another run may have logged in), and only then does one worker log in. Client,
answer parsing and the contract §5 table in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ordertrack_dagster.couriers.answers import (
    first_entry,
    newest_activity_time,
    parse_courier_time,
    read_status,
)
from ordertrack_dagster.couriers.description import CourierDescription, login_settings
from ordertrack_dagster.couriers.engine import Request
from ordertrack_dagster.couriers.failures import BatchFailure
from ordertrack_dagster.couriers.login import LoginClient, LoginResource, token_at
from ordertrack_dagster.records import Interpretation, OrderContext, Outcome
from ordertrack_dagster.resources.state import CachedToken
from ordertrack_dagster.statuses import Canonical, mapping_table

C = Canonical
DEFAULT_TOKEN_LIFETIME = timedelta(hours=24)
#: A longer stated lifetime is not believed (a 401 would still refresh it, but only then).
MAX_TOKEN_LIFETIME = timedelta(days=30)

#: contract §5 Velocity (`shipment_status`, else `shipment_track[0].current_status`).
STATUS_TABLE = mapping_table(
    {
        None: "MANIFEST_UPLOADED PENDING PROCESSING READY_FOR_PICKUP PICKUP_SCHEDULED",
        C.IN_TRANSIT: "IN_TRANSIT SHIPPED PICKED_UP",
        C.OUT_FOR_DELIVERY: "OUT_FOR_DELIVERY",
        C.DELIVERED: "DELIVERED",
        C.NDR: "NDR UNDELIVERED FAILED_ATTEMPT NDR_RAISED NEED_ATTENTION REATTEMPT_DELIVERY",
        C.RTO: "RTO RTO_INITIATED RTO_DELIVERED",
        C.RTO_IN_TRANSIT: "RTO_IN_TRANSIT RETURN_TO_ORIGIN RTO_NEED_ATTENTION",
        C.BOOKING_CANCELLED: "CANCELLED NOT_PICKED REJECTED",
        C.LOST: "LOST MISSING RTO_LOST",
        C.DESTROY: "DAMAGED DESTROYED",
    }
)


def interpret(answer: Any, order: OrderContext, now: datetime) -> Interpretation:
    """Read one AWB's `tracking_data`; its time is the newest activity's date."""
    data = answer.get("tracking_data") if isinstance(answer, dict) else None
    if not isinstance(data, dict):
        return Interpretation(Outcome.FAILED, alert="malformed answer: no tracking_data")
    return read_status(
        [
            (data.get("shipment_status"), STATUS_TABLE),
            (first_entry(data.get("shipment_track")).get("current_status"), STATUS_TABLE),
        ],
        newest_activity_time(data.get("shipment_track_activities")),
    )


class VelocityClient(LoginClient):
    token_name = "velocity"
    # Five failed logins lock the account: after one, nobody tries again for half an hour.
    login_block_seconds = 1800.0
    # Every login revokes the token all other workers and runs hold: keep refreshes apart.
    min_refresh_seconds = 30.0

    def login_request(self, username: str, password: str) -> Request:
        return Request(
            "POST",
            f"{self.url}/custom/api/v1/auth-token",
            json={"username": username, "password": password},
        )

    def read_login(self, payload: Any, now: datetime) -> CachedToken | None:
        token = token_at(payload, "token")
        if token is None:
            return None
        expires_at = parse_courier_time(payload.get("expires_at"))
        if expires_at is None or not now < expires_at <= now + MAX_TOKEN_LIFETIME:
            expires_at = now + DEFAULT_TOKEN_LIFETIME  # absent, past or a sentinel year 9999
        return CachedToken(token, expires_at)

    def token_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": token}  # raw, no "Bearer"

    def build_request(self, keys: Sequence[str]) -> Request:
        return Request(
            "POST", f"{self.url}/custom/api/v1/order-tracking", json={"awbs": list(keys)}
        )

    def split_answer(self, keys: Sequence[str], payload: Any) -> dict[str, Any]:
        """`result` keyed by AWB; an AWB missing from it is not found."""
        result = payload.get("result") if isinstance(payload, dict) else None
        if result == []:  # an empty map, serialised as a list
            return {}
        if isinstance(result, dict):
            return {key: result[key] for key in keys if key in result}
        if isinstance(payload, dict) and "message" in payload:
            raise BatchFailure(f"courier error: {payload['message']!r}", retryable=False)
        raise BatchFailure("unexpected answer shape (no result object)", retryable=False)


class VelocityResource(LoginResource):
    """Velocity's tracking API (login with a username and password)."""

    client_class = VelocityClient


DESCRIPTION = CourierDescription(
    resource_key="velocity",
    resource_class=VelocityResource,
    settings=login_settings("VELOCITY"),
    interpreters={"velocity": interpret},
)
