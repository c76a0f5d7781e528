"""Which status changes queue which side effect: contract §7's table, row by row, asked of
the declarations through `events_for`, the one function the write path calls."""

from datetime import UTC, datetime

import pytest

from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.markers import (
    SLACK_CHANNEL_SETTINGS,
    Event,
    Transition,
    events_for,
    same_india_day,
)
from ordertrack_dagster.statuses import Canonical

C = Canonical
BOOKED = datetime(2026, 3, 10, 5, 0, tzinfo=UTC)  # 10:30 in India
SAME_DAY = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # 17:30 in India, the same day
NEXT_DAY = datetime(2026, 3, 11, 5, 0, tzinfo=UTC)
#: the statuses §7 gives a side effect; every other one queues nothing
WITH_EFFECTS = {C.BOOKING_CANCELLED, C.LOST, C.DESTROY, C.RTO, C.RTO_IN_TRANSIT, C.DELIVERED}


def change(
    status: Canonical,
    flow_key: str = "delhivery_b2c",
    booked_at: datetime | None = BOOKED,
    event_time: datetime | None = SAME_DAY,
) -> Transition:
    return Transition(flow_key, status, booked_at, event_time)


@pytest.mark.parametrize("flow_key", list(FLOWS))
def test_booking_cancelled_queues_its_slack_message_in_every_flow(flow_key):
    assert events_for(change(C.BOOKING_CANCELLED, flow_key)) == (Event.SLACK_CANCELLED,)


@pytest.mark.parametrize("flow_key", list(FLOWS))
@pytest.mark.parametrize("status", [C.LOST, C.DESTROY])
def test_lost_and_destroy_queue_their_slack_message_in_every_flow(status, flow_key):
    assert events_for(change(status, flow_key)) == (Event.SLACK_LOST_DESTROY,)


@pytest.mark.parametrize("flow_key", list(FLOWS))
@pytest.mark.parametrize("status", [C.RTO, C.RTO_IN_TRANSIT])
def test_either_return_status_queues_the_crm_webhook_on_first_entry_only(status, flow_key):
    assert events_for(change(status, flow_key)) == (Event.CRM_RTO,)
    # the first entry is judged by MongoDB on the stored timestamps of both statuses
    assert Event.CRM_RTO.trigger.first_entry
    assert Event.CRM_RTO.trigger.statuses == {C.RTO, C.RTO_IN_TRANSIT}


def test_a_b2b_delivery_on_the_day_it_was_booked_queues_its_slack_message():
    same_day = change(C.DELIVERED, "delhivery_b2b")
    assert events_for(same_day) == (Event.SLACK_B2B_SAME_DAY_DELIVERY,)


@pytest.mark.parametrize("flow_key", sorted(set(FLOWS) - {"delhivery_b2b"}))
def test_a_same_day_delivery_of_another_flow_queues_nothing(flow_key):
    assert events_for(change(C.DELIVERED, flow_key)) == ()


@pytest.mark.parametrize(
    ("booked_at", "event_time"),
    [(BOOKED, NEXT_DAY), (None, SAME_DAY), (BOOKED, None)],
    ids=["next day", "booking time unknown", "delivery time unknown"],
)
def test_a_b2b_delivery_not_known_to_be_the_same_day_queues_nothing(booked_at, event_time):
    assert events_for(change(C.DELIVERED, "delhivery_b2b", booked_at, event_time)) == ()


def test_the_same_day_is_the_india_calendar_day_not_the_utc_one():
    half_past_midnight = datetime(2026, 3, 10, 19, 0, tzinfo=UTC)  # 00:30 on 11 March in India
    afternoon_before = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)  # 15:30 on 10 March in India
    afternoon_after = datetime(2026, 3, 11, 10, 0, tzinfo=UTC)  # 15:30 on 11 March in India
    # two UTC days, one India day
    assert same_india_day(change(C.DELIVERED, "delhivery_b2b", half_past_midnight, afternoon_after))
    # one UTC day, two India days
    assert not same_india_day(
        change(C.DELIVERED, "delhivery_b2b", afternoon_before, half_past_midnight)
    )


@pytest.mark.parametrize("flow_key", list(FLOWS))
@pytest.mark.parametrize("status", sorted(set(Canonical) - WITH_EFFECTS))
def test_every_other_status_queues_nothing(status, flow_key):
    assert events_for(change(status, flow_key)) == ()


def test_every_flow_a_trigger_names_is_a_flow():
    named = {flow for event in Event for flow in event.trigger.flows or ()}
    assert named <= set(FLOWS)


def test_each_slack_message_goes_to_the_channel_setting_of_the_contract():
    assert {event.value: setting for event, setting in SLACK_CHANNEL_SETTINGS.items()} == {
        "slack_booking_cancelled": "BOOKING_CANCELED_CHANNEL_ID",
        "slack_lost_destroy": "LOST_DESTROY_SLACK_CHANNEL_ID",
        "slack_b2b_same_day_delivery": "DELIVERED_B2B_SLACK_CHANNEL_ID",
    }
