"""The adaptive polling policy (polling.py), pure: intervals, the queue's order, the bounds."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.polling import (
    BACKED_OFF_SHARE,
    BACKOFF_SHARE,
    CADENCES,
    NEAR_DELIVERY_LONGEST,
    cadence,
    max_interval,
    next_poll_at,
    poll_interval,
    polling_order,
)
from ordertrack_dagster.statuses import Canonical

B2C = get_flow("delhivery_b2c")
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TICK = timedelta(minutes=8)


@dataclass
class SimOrder:
    """An order as a simulated clock keeps it: what the write path would store."""

    name: str
    status: Canonical | None
    changed_at: datetime
    courier_status: str | None = None
    asked_at: datetime | None = None
    last_tracking_time: datetime | None = None
    next_poll_at: datetime | None = None

    def polled(self, at: datetime) -> None:
        self.asked_at = self.last_tracking_time = at
        self.next_poll_at = next_poll_at(self.status, self.changed_at, at, self.courier_status)


def test_never_asked_has_no_next_poll_and_goes_first() -> None:
    assert next_poll_at(Canonical.IN_TRANSIT, None, None, None) is None
    fresh = SimOrder("new", None, NOW)
    asked = SimOrder("ofd", Canonical.OUT_FOR_DELIVERY, NOW)
    asked.polled(NOW - timedelta(hours=1))
    assert [o.name for o in polling_order([asked, fresh])] == ["new", "ofd"]


def test_out_for_delivery_is_due_at_the_next_tick_and_never_more_than_30_minutes_apart() -> None:
    assert next_poll_at(Canonical.OUT_FOR_DELIVERY, NOW, NOW, "ud-dispatched") == NOW
    assert max_interval(Canonical.OUT_FOR_DELIVERY, B2C) == timedelta(minutes=30)
    assert poll_interval(Canonical.OUT_FOR_DELIVERY, timedelta(days=2), None) == (
        timedelta(minutes=30) * BACKED_OFF_SHARE
    )


def test_in_transit_stays_frequent_through_its_usual_stay_and_backs_off_only_when_stuck() -> None:
    """Two days in transit makes out for delivery nearer, not farther: no backing off then
    (the old table asked it every 4 hours and saw out for delivery hours late); only a
    shipment days past line haul's usual stay (stuck, misrouted) backs off."""
    shortest = CADENCES[Canonical.IN_TRANSIT].shortest
    stuck_after = CADENCES[Canonical.IN_TRANSIT].stuck_after
    for standing in (timedelta(minutes=30), timedelta(days=1), timedelta(days=2), stuck_after):
        assert poll_interval(Canonical.IN_TRANSIT, standing, "ud-in_transit") == shortest
    half_a_day_stuck = poll_interval(Canonical.IN_TRANSIT, stuck_after + timedelta(hours=12), None)
    assert half_a_day_stuck == timedelta(hours=12) * BACKOFF_SHARE == timedelta(minutes=90)
    a_week = poll_interval(Canonical.IN_TRANSIT, timedelta(days=7), "ud-in_transit")
    assert max_interval(Canonical.IN_TRANSIT, B2C) == timedelta(hours=4)
    assert a_week == cadence(Canonical.IN_TRANSIT).longest * BACKED_OFF_SHARE == timedelta(hours=3)


def test_every_status_a_change_is_likely_from_is_asked_every_tick_within_its_usual_stay() -> None:
    for status in (None, Canonical.PENDING, Canonical.OUT_FOR_DELIVERY, Canonical.NDR):
        assert poll_interval(status, timedelta(hours=6), None) == timedelta(0), status
    for status in (Canonical.RTO_IN_TRANSIT, Canonical.RTO):
        assert poll_interval(status, timedelta(hours=20), "rt-in_transit") == timedelta(0)


def test_returned_to_origin_backs_off_at_once() -> None:
    """RTO is also "return initiated" (asked every tick); the courier's "returned to origin"
    ends the shipment, so it waits the row's longest at once, freeing the budget."""
    for raw in ("dl-rto", "RTO_DELIVERED", "RTO Delivered"):
        assert poll_interval(Canonical.RTO, timedelta(minutes=5), raw) == (
            cadence(Canonical.RTO).longest * BACKED_OFF_SHARE
        )


def test_courier_wording_near_delivery_shortens_a_long_interval() -> None:
    """Shiprocket's REACHED_DEST_CITY, Delhivery's rt-dispatched: a change comes within hours."""
    for raw in ("REACHED_DEST_CITY", "Reached At Destination Hub", "rt-dispatched"):
        assert poll_interval(Canonical.IN_TRANSIT, timedelta(days=5), raw) == (
            NEAR_DELIVERY_LONGEST * BACKED_OFF_SHARE
        )
    assert poll_interval(Canonical.RTO_IN_TRANSIT, timedelta(days=8), "rt-dispatched") == (
        NEAR_DELIVERY_LONGEST * BACKED_OFF_SHARE
    )


def test_non_canonical_statuses_share_the_not_picked_up_row() -> None:
    assert cadence("booked") == cadence(None) == CADENCES[None]
    assert cadence("in transit") == cadence(Canonical.IN_TRANSIT)


@pytest.mark.parametrize("status", [*Canonical, None, "manifested"])
def test_no_interval_exceeds_the_status_maximum(status: Canonical | str | None) -> None:
    rng = random.Random(7)
    for _ in range(200):
        unchanged = timedelta(minutes=rng.uniform(-60, 60 * 24 * 40))
        courier = rng.choice([None, "", "IN_TRANSIT", "REACHED_DEST_CITY", "ud-pending"])
        interval = poll_interval(status, unchanged, courier)
        assert timedelta(0) <= interval <= cadence(status).longest


def test_unknown_change_time_counts_from_the_poll() -> None:
    """An order tracked before the field existed is asked often at first, then backs off."""
    polled = NOW - timedelta(minutes=1)
    shortest = CADENCES[Canonical.IN_TRANSIT].shortest
    assert next_poll_at(Canonical.IN_TRANSIT, None, polled, None) == polled + shortest


def test_spare_budget_takes_every_due_order_whatever_its_next_poll() -> None:
    orders = [SimOrder(f"o{i}", Canonical.IN_TRANSIT, NOW - timedelta(days=i)) for i in range(10)]
    for order in orders:
        order.polled(NOW - timedelta(minutes=8))  # all due in the future
    assert len(polling_order(orders, cap=10)) == 10
    assert len(polling_order(orders, cap=None)) == 10


def test_backlog_over_the_cap_asks_out_for_delivery_and_ndr_before_week_old_in_transit() -> None:
    """Week-old in-transit orders asked 2 to 3 hours ago came first in the old queue (asked
    longest ago); now the urgent ones go first, and only those past their (backed-off)
    3 hours go before the urgent ones."""
    stuck = [
        SimOrder(f"stuck{i}", Canonical.IN_TRANSIT, NOW - timedelta(days=7)) for i in range(50)
    ]
    for i, order in enumerate(stuck):
        order.polled(NOW - timedelta(hours=2, minutes=i))
    overdue = [
        SimOrder(f"overdue{i}", Canonical.IN_TRANSIT, NOW - timedelta(days=7)) for i in range(3)
    ]
    for order in overdue:
        order.polled(NOW - timedelta(hours=4, minutes=30))
    urgent = [
        SimOrder("ofd", Canonical.OUT_FOR_DELIVERY, NOW - timedelta(hours=2), "ud-dispatched"),
        SimOrder("ndr", Canonical.NDR, NOW - timedelta(hours=2), "UNDELIVERED"),
    ]
    for order in urgent:
        order.polled(NOW - timedelta(minutes=30))
    taken = [o.name for o in polling_order([*stuck, *urgent, *overdue], cap=10)]
    assert taken[:3] == ["overdue0", "overdue1", "overdue2"]
    assert set(taken[3:5]) == {"ofd", "ndr"}
    assert taken[5:] == [f"stuck{i}" for i in range(49, 44, -1)]  # asked longest ago


def test_simulated_backlog_starves_nothing() -> None:
    """Two days of 8-minute ticks over a population four times the cap, each status standing
    since a random time in the last ten days (the change time moves only when the canonical
    status does): every order is asked again within its status's maximum interval (plus the
    tick it waits for); out for delivery far more often than stuck in-transit orders, and
    in-transit orders within line haul's usual stay more often than stuck ones."""
    rng = random.Random(22)
    statuses = [
        (Canonical.IN_TRANSIT, None),
        (Canonical.IN_TRANSIT, "REACHED_DEST_CITY"),
        (Canonical.OUT_FOR_DELIVERY, "OUT_FOR_DELIVERY"),
        (Canonical.NDR, "UNDELIVERED"),
        (Canonical.PENDING, None),
        ("booked", None),
        (Canonical.RTO_IN_TRANSIT, None),
    ]
    orders = []
    for i in range(400):
        status, courier = rng.choice(statuses)
        changed = NOW - timedelta(hours=rng.uniform(0, 24 * 10))
        orders.append(SimOrder(f"o{i}", status, changed, courier))
    cap = 100
    gaps: dict[str, list[timedelta]] = {order.name: [] for order in orders}
    clock = NOW
    for _ in range(2 * 24 * 60 // 8):
        for order in polling_order(orders, cap=cap):
            if order.asked_at is not None:
                gap = clock - order.asked_at
                assert gap <= max_interval(order.status, B2C) + TICK, order
                gaps[order.name].append(gap)
            order.polled(clock)
        clock += TICK
    for order in orders:
        assert clock - order.asked_at <= max_interval(order.status, B2C) + TICK, order

    def mean_gap(status: Canonical, stuck: bool) -> timedelta:
        stuck_after = CADENCES[status].stuck_after
        waits = [
            gap
            for order in orders
            if order.status is status and order.courier_status is None
            if (clock - order.changed_at > stuck_after + timedelta(days=1)) is stuck
            for gap in gaps[order.name]
        ]
        return sum(waits, timedelta(0)) / len(waits)

    stuck_transit = mean_gap(Canonical.IN_TRANSIT, stuck=True)
    assert mean_gap(Canonical.IN_TRANSIT, stuck=False) * 3 < stuck_transit
    ofd = [
        sum(gaps[o.name], timedelta(0)) / len(gaps[o.name])
        for o in orders
        if o.status is Canonical.OUT_FOR_DELIVERY
    ]
    assert max(ofd) < stuck_transit
