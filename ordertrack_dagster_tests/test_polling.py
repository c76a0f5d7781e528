"""The adaptive polling policy (polling.py), pure: intervals, the queue's order, the bounds."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from ordertrack_dagster.polling import (
    CADENCES,
    NEAR_DELIVERY_LONGEST,
    max_interval,
    next_poll_at,
    poll_interval,
    polling_order,
)
from ordertrack_dagster.statuses import Canonical

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
    assert poll_interval(Canonical.OUT_FOR_DELIVERY, timedelta(days=2), None) == timedelta(
        minutes=30
    )


def test_in_transit_backs_off_with_the_time_it_stood() -> None:
    fresh = poll_interval(Canonical.IN_TRANSIT, timedelta(minutes=30), "ud-in_transit")
    a_day = poll_interval(Canonical.IN_TRANSIT, timedelta(days=1), "ud-in_transit")
    a_week = poll_interval(Canonical.IN_TRANSIT, timedelta(days=7), "ud-in_transit")
    assert fresh == timedelta(minutes=15)
    assert a_day == timedelta(hours=3)
    assert a_week == max_interval(Canonical.IN_TRANSIT) == timedelta(hours=4)


def test_courier_wording_near_delivery_shortens_a_long_interval() -> None:
    """Shiprocket's REACHED_DEST_CITY, Delhivery's rt-dispatched: a change comes within hours."""
    for raw in ("REACHED_DEST_CITY", "Reached At Destination Hub", "rt-dispatched"):
        assert poll_interval(Canonical.IN_TRANSIT, timedelta(days=5), raw) == (
            NEAR_DELIVERY_LONGEST
        )
    assert poll_interval(Canonical.RTO_IN_TRANSIT, timedelta(days=5), "rt-dispatched") == (
        NEAR_DELIVERY_LONGEST
    )


def test_non_canonical_statuses_share_the_not_picked_up_row() -> None:
    assert max_interval("booked") == max_interval(None) == CADENCES[None].longest
    assert max_interval("in transit") == max_interval(Canonical.IN_TRANSIT)


@pytest.mark.parametrize("status", [*Canonical, None, "manifested"])
def test_no_interval_exceeds_the_status_maximum(status: Canonical | str | None) -> None:
    rng = random.Random(7)
    for _ in range(200):
        unchanged = timedelta(minutes=rng.uniform(-60, 60 * 24 * 40))
        courier = rng.choice([None, "", "IN_TRANSIT", "REACHED_DEST_CITY", "ud-pending"])
        interval = poll_interval(status, unchanged, courier)
        assert timedelta(0) <= interval <= max_interval(status)


def test_unknown_change_time_counts_from_the_poll() -> None:
    """An order tracked before the field existed is asked often at first, then backs off."""
    polled = NOW - timedelta(minutes=1)
    assert next_poll_at(Canonical.IN_TRANSIT, None, polled, None) == polled + timedelta(minutes=15)


def test_spare_budget_takes_every_due_order_whatever_its_next_poll() -> None:
    orders = [SimOrder(f"o{i}", Canonical.IN_TRANSIT, NOW - timedelta(days=i)) for i in range(10)]
    for order in orders:
        order.polled(NOW - timedelta(minutes=8))  # all due in the future
    assert len(polling_order(orders, cap=10)) == 10
    assert len(polling_order(orders, cap=None)) == 10


def test_backlog_over_the_cap_asks_out_for_delivery_and_ndr_before_week_old_in_transit() -> None:
    """Week-old in-transit orders asked 3 to 4 hours ago came first in the old queue (asked
    longest ago); now the urgent ones go first, and only those past their 4-hour maximum
    go before the urgent ones."""
    stuck = [
        SimOrder(f"stuck{i}", Canonical.IN_TRANSIT, NOW - timedelta(days=7)) for i in range(50)
    ]
    for i, order in enumerate(stuck):
        order.polled(NOW - timedelta(hours=3, minutes=i))
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
    """Two days of 8-minute ticks over a population twice the cap, statuses changing as the
    simulator's life cycles do: every order is asked again within its status's maximum
    interval (plus the tick it waits for), and urgent orders far more often than stuck ones."""
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
                assert gap <= max_interval(order.status) + TICK, order
                gaps[order.name].append(gap)
            if rng.random() < 0.02:  # a new scan: the same status, changed just now
                order.changed_at = clock
            order.polled(clock)
        clock += TICK
    for order in orders:
        assert clock - order.asked_at <= max_interval(order.status) + TICK, order
    mean = {
        name: sum(g, timedelta(0)) / len(g)
        for name, g in gaps.items()
        if g and name in {o.name for o in orders}
    }
    by_status: dict[str, list[timedelta]] = {}
    for order in orders:
        if order.name in mean:
            by_status.setdefault(str(order.status), []).append(mean[order.name])
    ofd = by_status[Canonical.OUT_FOR_DELIVERY.value]
    transit = by_status[Canonical.IN_TRANSIT.value]
    assert max(ofd) < sorted(transit)[len(transit) // 2]
