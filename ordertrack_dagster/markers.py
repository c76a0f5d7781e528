"""What the status write leaves for the effects: one marker per side effect on the order.

The write path (tracking) sets `orders.ordertrack_outbox.<event>` atomically with a status
change; the outbox (effects) drains it. Both sides agree on the field, the events and the
marker's shape here.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

OUTBOX_FIELD = "ordertrack_outbox"


class Event(StrEnum):
    """Side effects that the first entry into a status triggers (contract §7)."""

    CRM_RTO = "crm_rto"
    SLACK_CANCELLED = "slack_booking_cancelled"
    SLACK_LOST_DESTROY = "slack_lost_destroy"
    SLACK_B2B_SAME_DAY_DELIVERY = "slack_b2b_same_day_delivery"


def marker(status: str, flow_key: str, tracking_key: str, queued_at: datetime) -> dict[str, Any]:
    """One event's marker: the status it was written for, by which flow, for which shipment."""
    return {
        "status": status,
        "flow": flow_key,
        "tracking_key": tracking_key,
        "queued_at": queued_at,
    }
