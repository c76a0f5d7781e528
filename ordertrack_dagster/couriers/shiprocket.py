"""Shiprocket tracking: up to 50 AWBs a POST, with a token from a login (valid 10 days).

Client, answer parsing and the contract §5 tables (names and numeric codes) in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ordertrack_dagster.couriers.answers import first_entry, newest_activity_time, read_status
from ordertrack_dagster.couriers.description import CourierDescription, login_settings
from ordertrack_dagster.couriers.engine import Request
from ordertrack_dagster.couriers.failures import BatchFailure
from ordertrack_dagster.couriers.login import LoginClient, LoginResource, token_at
from ordertrack_dagster.records import Interpretation, OrderContext, Outcome
from ordertrack_dagster.resources.state import CachedToken
from ordertrack_dagster.statuses import Canonical, mapping_table

C = Canonical
TOKEN_LIFETIME = timedelta(days=10)

#: contract §5 Shiprocket names (`current_status` and `sr-status-label`).
STATUS_TABLE = mapping_table(
    {
        None: "SHIPPED PICKUP_RESCHEDULED OUT_FOR_PICKUP PENDING PICKUP_ERROR AWB_ASSIGNED "
        "LABEL_GENERATED PICKUP_SCHEDULED PICKUP_GENERATED PICKUP_QUEUED MANIFEST_GENERATED",
        C.IN_TRANSIT: "IN_TRANSIT PICKED_UP REACHED_DEST_CITY REACHED_AT_DESTINATION "
        "REACHED_AT_DESTINATION_HUB RECEIVED_AT_ORIGIN IN_TRANSIT_TO_NEXT_FACILITY DISPATCHED",
        C.OUT_FOR_DELIVERY: "OUT_FOR_DELIVERY",
        C.DELIVERED: "DELIVERED",
        C.NDR: "NDR FAILED_DELIVERY UNDELIVERED",
        C.RTO: "RTO RTO_INITIATED RTO_DELIVERED RTO_ACKNOWLEDGED",
        C.RTO_IN_TRANSIT: "RTO_IN_TRANSIT RTO_OFD RTO_OUT_FOR_DELIVERY RTO_NDR",
        C.BOOKING_CANCELLED: "CANCELLED CANCELED NOT_PICKED CANCELED_BY_SELLER "
        "CANCELLATION_REQUESTED",
        C.LOST: "LOST UNTRACEABLE MISSING",
        C.DESTROY: "DESTROYED DISPOSED_OFF DAMAGED",
    }
)

#: contract §5 numeric `shipment_status` codes, used when neither name maps (improvement).
CODE_TABLE = mapping_table(
    {
        None: "0 1 2 3 4 5 11 13 15 19 20 27 52",
        C.IN_TRANSIT: "6 18 38 42",
        C.OUT_FOR_DELIVERY: "17",
        C.DELIVERED: "7",
        C.NDR: "21",
        C.RTO: "9 10 14",
        C.RTO_IN_TRANSIT: "40 41 46",
        C.BOOKING_CANCELLED: "8 16 45",
        C.LOST: "12 76",
        C.DESTROY: "24 25 44",
    }
)


def interpret(answer: Any, order: OrderContext, now: datetime) -> Interpretation:
    """Read one AWB's `tracking_data`.

    Status: `shipment_track[0].current_status`, else the newest activity's `sr-status-label`,
    else the numeric `shipment_status`. The activity `status` field is the underlying
    carrier's own code and is never mapped. `track_status: 0` with an error text is an AWB
    without scans yet: read, no change.
    """
    data = answer.get("tracking_data") if isinstance(answer, dict) else None
    if not isinstance(data, dict):
        return Interpretation(Outcome.FAILED, alert="malformed answer: no tracking_data")
    if data.get("track_status") == 0 and data.get("error"):
        return Interpretation(Outcome.NO_CHANGE)
    activities = data.get("shipment_track_activities")
    return read_status(
        [
            (first_entry(data.get("shipment_track")).get("current_status"), STATUS_TABLE),
            (first_entry(activities).get("sr-status-label"), STATUS_TABLE),
            (data.get("shipment_status"), CODE_TABLE),
        ],
        newest_activity_time(activities),
    )


class ShiprocketClient(LoginClient):
    token_name = "shiprocket"

    def login_request(self, username: str, password: str) -> Request:
        return Request(
            "POST",
            f"{self.url}/v1/external/auth/login",
            json={"email": username, "password": password},
        )

    def read_login(self, payload: Any, now: datetime) -> CachedToken | None:
        token = token_at(payload, "token")
        return None if token is None else CachedToken(token, now + TOKEN_LIFETIME)

    def token_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def build_request(self, keys: Sequence[str]) -> Request:
        return Request(
            "POST", f"{self.url}/v1/external/courier/track/awbs", json={"awbs": list(keys)}
        )

    def split_answer(self, keys: Sequence[str], payload: Any) -> dict[str, Any]:
        """An object keyed by AWB; an AWB left out was not answered."""
        if not isinstance(payload, dict):
            raise BatchFailure(
                "unexpected answer shape (not an object keyed by AWB)", retryable=False
            )
        answers = {key: payload[key] for key in keys if key in payload}
        if not answers and "message" in payload:
            raise BatchFailure(f"courier error: {payload['message']!r}", retryable=False)
        return answers


class ShiprocketResource(LoginResource):
    """Shiprocket's tracking API (login with an email and password)."""

    client_class = ShiprocketClient


DESCRIPTION = CourierDescription(
    resource_key="shiprocket",
    resource_class=ShiprocketResource,
    settings=login_settings("SHIPROCKET", identity="EMAIL"),
    interpreters={"shiprocket": interpret},
)
