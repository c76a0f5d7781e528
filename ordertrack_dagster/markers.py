"""What the status write leaves for the effects: one marker per side effect on the order.

The write path (tracking) sets `orders.ordertrack_outbox.<event>` atomically with a status
change; the outbox (effects) drains it. Both sides agree here on the field, the marker's
shape and the events, each declared once with its trigger (which status changes queue it),
so the write path asks `events_for` and names no effect, and the effects read the same
declaration (a Slack event's channel setting).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from ordertrack_dagster.records import INDIA
from ordertrack_dagster.statuses import Canonical

OUTBOX_FIELD = "ordertrack_outbox"


@dataclass(frozen=True)
class Transition:
    """A status change about to be written, as a trigger sees it."""

    flow_key: str
    status: Canonical  # the status entered
    booked_at: datetime | None
    event_time: datetime | None  # the courier's time of the change


def same_india_day(transition: Transition) -> bool:
    """The change happened on the India calendar day the shipment was booked."""
    booked, changed = transition.booked_at, transition.event_time
    if booked is None or changed is None:
        return False
    return booked.astimezone(INDIA).date() == changed.astimezone(INDIA).date()


@dataclass(frozen=True)
class Trigger:
    """Which status changes queue an event (contract §7)."""

    statuses: frozenset[Canonical]  # entering any of these
    flows: frozenset[str] | None = None  # the flows it applies to; None: every flow
    #: a further condition on the change, pure
    condition: Callable[[Transition], bool] | None = None
    #: only the order's first entry into any of `statuses`: the write checks their
    #: `tracking_timestamps` on the stored document, inside the same update
    first_entry: bool = False

    def fires(self, transition: Transition) -> bool:
        return (
            transition.status in self.statuses
            and (self.flows is None or transition.flow_key in self.flows)
            and (self.condition is None or self.condition(transition))
        )


class Event(StrEnum):
    """Side effects a status change queues (contract §7), one declaration each: its name (the
    marker's key and the outbox kind), its trigger and, for a Slack message, the setting that
    names its channel. Its texts are in `effects/messages.py`."""

    trigger: Trigger
    channel_setting: str | None

    def __new__(cls, value: str, trigger: Trigger, channel_setting: str | None = None) -> Event:
        event = str.__new__(cls, value)
        event._value_ = value
        event.trigger = trigger
        event.channel_setting = channel_setting
        return event

    CRM_RTO = (
        "crm_rto",
        Trigger(frozenset({Canonical.RTO, Canonical.RTO_IN_TRANSIT}), first_entry=True),
    )
    SLACK_CANCELLED = (
        "slack_booking_cancelled",
        Trigger(frozenset({Canonical.BOOKING_CANCELLED})),
        "BOOKING_CANCELED_CHANNEL_ID",
    )
    SLACK_LOST_DESTROY = (
        "slack_lost_destroy",
        Trigger(frozenset({Canonical.LOST, Canonical.DESTROY})),
        "LOST_DESTROY_SLACK_CHANNEL_ID",
    )
    SLACK_B2B_SAME_DAY_DELIVERY = (
        "slack_b2b_same_day_delivery",
        Trigger(
            frozenset({Canonical.DELIVERED}),
            flows=frozenset({"delhivery_b2b"}),
            condition=same_india_day,
        ),
        "DELIVERED_B2B_SLACK_CHANNEL_ID",
    )


def events_for(transition: Transition) -> tuple[Event, ...]:
    """The events a status change queues, in declaration order."""
    return tuple(event for event in Event if event.trigger.fires(transition))


#: The events sent as Slack messages, with the setting that names each one's channel.
SLACK_CHANNEL_SETTINGS = {
    event: event.channel_setting for event in Event if event.channel_setting is not None
}


def marker(status: str, flow_key: str, tracking_key: str, queued_at: datetime) -> dict[str, Any]:
    """One event's marker: the status it was written for, by which flow, for which shipment."""
    return {
        "status": status,
        "flow": flow_key,
        "tracking_key": tracking_key,
        "queued_at": queued_at,
    }
