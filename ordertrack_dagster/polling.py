"""Adaptive polling (contract §2): when each order should be asked again, and the queue's order.

Stable API, pure (no I/O, no clock), so the selection, the write path, the freshness check and
the benchmark's simulated clock all run this same code:

- `next_poll_at(status, last_changed_at, last_polled_at, courier_status) -> datetime | None`:
  when the order is next due; None for an order never asked (it goes first).
- `poll_interval(status, unchanged_for, courier_status) -> timedelta`: the gap behind it.
- `max_interval(status, flow) -> timedelta`: the longest gap an order of the flow in a
  status may wait: the bound that keeps anything from starving, that the freshness check
  applies and that the benchmark measures against.
- `queue_key(next_poll_at, asked_at, last_tracking_time)` and `polling_order(orders, cap)`:
  the order selection takes orders in, earliest next poll first, never-asked first, exactly
  as MongoDB sorts by `SELECTION_SORT` (a missing value sorts before any date there too).

`status` is a canonical status (`Canonical` or its stored string); anything else (booked,
manifested, pickup scheduled: ids production tracks but that are not canonical) or None
takes the row for statuses not yet picked up. `courier_status` is the raw value as stored
(`orders.courier_status`), in any case and punctuation.

Why a priority and not a filter: the next poll time only orders the queue. While a flow's
due orders fit its cap, every one of them is still taken at every tick, as before; only when
they do not (a courier's limit binds) does it decide who waits, and then the shipments within
their status's usual stay (about to change) are asked before those stuck past it. An order's
key is at most `BACKED_OFF_SHARE` of its row's longest (never above `max_interval`) after its
last poll, so it is overdue before its bound and goes before every order not yet due: nothing
starves while the orders asked at their shortest fit the cap with that share to spare (the
queue then lags by less).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from ordertrack_dagster.flows import Flow, longest_wait
from ordertrack_dagster.statuses import Canonical, normalise_raw_status

#: When ordertrack last asked the courier about an order, answered or not (contract §2).
ASKED_FIELD = "ordertrack_asked_at"
#: When the order is next due (written with every poll): the queue's first sort key.
NEXT_POLL_FIELD = "ordertrack_next_poll_at"
#: When the order's status last changed: the courier's time for it, else the write's time.
STATUS_CHANGED_FIELD = "ordertrack_status_changed_at"

#: MongoDB's sort for selection; `queue_key` is the same order in Python. A missing value
#: sorts first in MongoDB, so a never-asked order (and one polled before this field existed)
#: goes first, and among those the old order (longest not asked) holds.
SELECTION_SORT: list[tuple[str, int]] = [
    (NEXT_POLL_FIELD, 1),
    (ASKED_FIELD, 1),
    ("last_tracking_time", 1),
    ("_id", 1),
]

#: Past its usual stay (`Cadence.stuck_after`), a status is asked again after this share of
#: the time it overstayed: a day past it, every 3 hours; an hour past it, every 8 minutes.
BACKOFF_SHARE = 1 / 8
#: The share of a status's longest interval an order backs off to at most. The rest is slack:
#: when the limit binds, every order waits past its next poll by about as long (the queue is
#: earliest next poll first), and an order backed off to its very bound would pass it.
BACKED_OFF_SHARE = 3 / 4


@dataclass(frozen=True)
class Cadence:
    """How often to ask about an order in one status.

    Why this shape: under a fixed request budget, detection delay is least when each order is
    asked in proportion to how likely it is to change soon. A shipment's chance of leaving a
    status does not fall while it stays there; it RISES as the status's usual stay runs out
    (in transit for two days: out for delivery is near). So an order is asked at its
    `shortest` for as long as shipments usually stay in its status, and backs off only once
    it has stayed well past that (stuck, misrouted, no scans: it is unlikely to change in the
    next hours), which frees the budget for the orders about to change.
    """

    shortest: timedelta  # while the status is within its usual stay (0: every tick)
    longest: timedelta  # however long it stood: the starvation bound and the freshness bound
    stuck_after: timedelta  # the stay past which a change is unlikely soon: backing off starts


_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_EVERY_TICK = timedelta(0)

#: The one table of polling intervals, by canonical status (None: not canonical, i.e. not yet
#: picked up: booked, manifested, pickup scheduled...). Every interval below a flow's schedule
#: interval means "every tick" for that flow.
CADENCES: dict[Canonical | None, Cadence] = {
    # Not picked up yet: the first scan (pickup, or a cancellation) matters to the seller and
    # comes the same day; a booking still without a scan after half a day waits on the
    # seller or has no scans at all (it may never get one), and backs off to 2 hours.
    None: Cadence(shortest=_EVERY_TICK, longest=2 * _HOUR, stuck_after=12 * _HOUR),
    Canonical.PENDING: Cadence(shortest=_EVERY_TICK, longest=2 * _HOUR, stuck_after=12 * _HOUR),
    # Line haul takes one to three days, and the longer a shipment has been in transit the
    # nearer out for delivery is (which Delhivery B2C announces with no wording of its own:
    # it says "In Transit" at the destination too). Only past three days is it stuck. Asked
    # every other tick, not every one: the largest group of live orders, and line haul's own
    # scans do not change its canonical status (spare budget still asks it every tick).
    Canonical.IN_TRANSIT: Cadence(shortest=15 * _MINUTE, longest=4 * _HOUR, stuck_after=3 * _DAY),
    # Delivered or failed within hours, often the same morning: a change missed here is a
    # status customers and ops never see. Every tick, and never more than 30 minutes apart.
    Canonical.OUT_FOR_DELIVERY: Cadence(
        shortest=_EVERY_TICK, longest=30 * _MINUTE, stuck_after=12 * _HOUR
    ),
    # A failed attempt: ops call the customer, the courier re-attempts or returns it, usually
    # the next day. Every tick for two days, hourly at most.
    Canonical.NDR: Cadence(shortest=_EVERY_TICK, longest=_HOUR, stuck_after=2 * _DAY),
    # Returns: the CRM webhook fired on entry; returned to origin ends the shipment (an end
    # state ops reconcile), days later. Every tick for the return's usual haul, 6-hourly at
    # most. RTO is both "return initiated" (in transit next, within a day) and "returned to
    # origin" (final: the courier's wording says which, see SETTLED).
    Canonical.RTO_IN_TRANSIT: Cadence(
        shortest=_EVERY_TICK, longest=6 * _HOUR, stuck_after=5 * _DAY
    ),
    Canonical.RTO: Cadence(shortest=_EVERY_TICK, longest=6 * _HOUR, stuck_after=_DAY),
    # End states are tracked only if TRACKING_STATUS names them (the default does not).
    Canonical.DELIVERED: Cadence(shortest=6 * _HOUR, longest=24 * _HOUR, stuck_after=_EVERY_TICK),
    Canonical.LOST: Cadence(shortest=6 * _HOUR, longest=24 * _HOUR, stuck_after=_EVERY_TICK),
    Canonical.DESTROY: Cadence(shortest=6 * _HOUR, longest=24 * _HOUR, stuck_after=_EVERY_TICK),
    Canonical.BOOKING_CANCELLED: Cadence(
        shortest=6 * _HOUR, longest=24 * _HOUR, stuck_after=_EVERY_TICK
    ),
}

#: What the courier last said that announces a change within hours, whatever the canonical
#: status: arrived at the destination (out for delivery next), out for delivery on a return
#: (returned next), a re-attempt scheduled. Normalised (contract §5); Delhivery B2C's stored
#: form `rt-dispatched` normalises to `RT_DISPATCHED`.
NEAR_DELIVERY = frozenset(
    {
        "REACHED_DEST_CITY",
        "REACHED_AT_DESTINATION",
        "REACHED_AT_DESTINATION_HUB",
        "REACH_DESTINATION",
        "OFD",
        "OUT_FOR_DELIVERY",
        "UD_DISPATCHED",
        "RT_DISPATCHED",
        "RTO_OFD",
        "RTO_OUT_FOR_DELIVERY",
        "RETURN_OFD",
        "UNDEL_REATTEMPT",
        "REATTEMPT_DELIVERY",
    }
)
#: The longest gap while the courier's wording says a change is near.
NEAR_DELIVERY_LONGEST = 30 * _MINUTE

#: What the courier last said that ends the shipment while its canonical status stays tracked:
#: returned to origin (canonical RTO, which also covers "return initiated"). Nothing follows
#: it, so it is asked at its status's longest interval at once. Delhivery B2C stores `dl-rto`.
SETTLED = frozenset({"DL_RTO", "RTO_DELIVERED", "RETURNED_TO_ORIGIN"})


def cadence(status: Canonical | str | None) -> Cadence:
    """The table's row for a status; non-canonical statuses share the not-picked-up row."""
    try:
        return CADENCES[Canonical(status)] if status is not None else CADENCES[None]
    except ValueError:
        return CADENCES[None]


def max_interval(status: Canonical | str | None, flow: Flow) -> timedelta:
    """The longest an order of `flow` in `status` waits between polls, whatever the courier
    said: the table's longest for the status, never below what the flow can hold
    (`flows.longest_wait`: its schedule, and its budget where that cannot ask every live
    order more often)."""
    return max(cadence(status).longest, longest_wait(flow))


def _said(courier_status: str | None, wordings: frozenset[str]) -> bool:
    return bool(courier_status) and normalise_raw_status(str(courier_status)) in wordings


def is_near_delivery(courier_status: str | None) -> bool:
    """Whether the courier's last wording announces a change within hours."""
    return _said(courier_status, NEAR_DELIVERY)


def is_settled(courier_status: str | None) -> bool:
    """Whether the courier's last wording ends the shipment (nothing is expected to follow)."""
    return _said(courier_status, SETTLED)


def poll_interval(
    status: Canonical | str | None, unchanged_for: timedelta, courier_status: str | None
) -> timedelta:
    """How long after a poll the order is due again: the row's shortest within the status's
    usual stay, then growing with the time past it, up to `BACKED_OFF_SHARE` of the row's
    longest (never past the longest itself)."""
    row = cadence(status)
    longest = row.longest
    if is_near_delivery(courier_status):
        longest = min(longest, NEAR_DELIVERY_LONGEST)
    longest = max(longest * BACKED_OFF_SHARE, row.shortest)
    if is_settled(courier_status):
        return longest
    overstayed = max(unchanged_for - row.stuck_after, timedelta(0))
    return min(max(overstayed * BACKOFF_SHARE, row.shortest), longest)


def next_poll_at(
    status: Canonical | str | None,
    last_changed_at: datetime | None,
    last_polled_at: datetime | None,
    courier_status: str | None,
) -> datetime | None:
    """When the order is next due; None for an order never asked (first in the queue).

    `last_changed_at` unknown (an order tracked before this field existed) counts as changed
    at the poll: asked often at first, backing off from then on.
    """
    if last_polled_at is None:
        return None
    changed = last_changed_at if last_changed_at is not None else last_polled_at
    return last_polled_at + poll_interval(status, last_polled_at - changed, courier_status)


class Queued(Protocol):
    """What ordering needs of an order (a snapshot row, or the benchmark's simulated order)."""

    @property
    def next_poll_at(self) -> datetime | None: ...
    @property
    def asked_at(self) -> datetime | None: ...
    @property
    def last_tracking_time(self) -> datetime | None: ...


#: Stands in for a missing time inside a sort key; the flag before it already put it first.
_NO_TIME = datetime.min.replace(tzinfo=UTC)
QueueKey = tuple[bool, datetime, bool, datetime, bool, datetime]


def queue_key(
    next_poll: datetime | None, asked_at: datetime | None, last_tracking_time: datetime | None
) -> QueueKey:
    """Sort key matching `SELECTION_SORT`: at each level a missing value comes first."""
    return (
        next_poll is not None,
        next_poll or _NO_TIME,
        asked_at is not None,
        asked_at or _NO_TIME,
        last_tracking_time is not None,
        last_tracking_time or _NO_TIME,
    )


QueuedOrder = TypeVar("QueuedOrder", bound=Queued)


def polling_order(orders: Iterable[QueuedOrder], cap: int | None = None) -> list[QueuedOrder]:
    """The orders in the order selection takes them, at most `cap` of them.

    Stable: orders with equal keys keep the order given (MongoDB breaks those ties by `_id`).
    """
    ranked = sorted(
        orders,
        key=lambda order: queue_key(order.next_poll_at, order.asked_at, order.last_tracking_time),
    )
    return ranked if cap is None else ranked[:cap]
