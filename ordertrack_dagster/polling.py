"""Adaptive polling (contract §2): when each order should be asked again, and the queue's order.

Stable API, pure (no I/O, no clock), so the selection, the write path, the freshness check and
the benchmark's simulated clock all run this same code:

- `next_poll_at(status, last_changed_at, last_polled_at, courier_status) -> datetime | None`:
  when the order is next due; None for an order never asked (it goes first).
- `poll_interval(status, unchanged_for, courier_status) -> timedelta`: the gap behind it.
- `max_interval(status) -> timedelta`: the longest gap the table allows a status, the bound
  that keeps anything from starving and that the freshness check applies.
- `queue_key(next_poll_at, asked_at, last_tracking_time)` and `polling_order(orders, cap)`:
  the order selection takes orders in, earliest next poll first, never-asked first, exactly
  as MongoDB sorts by `SELECTION_SORT` (a missing value sorts before any date there too).

`status` is a canonical status (`Canonical` or its stored string); anything else (booked,
manifested, pickup scheduled: ids production tracks but that are not canonical) or None
takes the row for statuses not yet picked up. `courier_status` is the raw value as stored
(`orders.courier_status`), in any case and punctuation.

Why a priority and not a filter: the next poll time only orders the queue. While a flow's
due orders fit its cap, every one of them is still taken at every tick, as before; only when
they do not (a courier's limit binds) does it decide who waits, and then the shipments about
to change (out for delivery, NDR, near the destination) are asked before those that have sat
in transit for days. An order's key is at most `max_interval` after its last poll, and an
order just polled gets a key at least `shortest` after now, so an overdue order always goes
before one just asked: nothing starves while the flow can poll each order once per
`max_interval` of its status.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

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

#: A status that has stood for a while is asked again after this share of its age: unchanged
#: for a day, an in-transit shipment is asked every 3 hours; for an hour, every 15 minutes
#: (the row's shortest). The older a status, the less likely it changes in the next minutes.
BACKOFF_SHARE = 1 / 8


@dataclass(frozen=True)
class Cadence:
    """How often to ask about an order in one status."""

    shortest: timedelta  # just after the status changed (0: every tick)
    longest: timedelta  # however long it stood: the starvation bound and the freshness bound


_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)

#: The one table of polling intervals, by canonical status (None: not canonical, i.e. not yet
#: picked up: booked, manifested, pickup scheduled...). Every interval below a flow's schedule
#: interval means "every tick" for that flow.
CADENCES: dict[Canonical | None, Cadence] = {
    # Not picked up yet: the first scan (pickup, or a cancellation) matters to the seller and
    # comes within a day or two; a fresh booking is asked often, one waiting long less so.
    None: Cadence(shortest=15 * _MINUTE, longest=2 * _HOUR),
    Canonical.PENDING: Cadence(shortest=15 * _MINUTE, longest=2 * _HOUR),
    # Line haul takes days and its scans do not change the canonical status; what ends it is
    # out for delivery, which the courier's own wording announces (NEAR_DELIVERY below).
    Canonical.IN_TRANSIT: Cadence(shortest=15 * _MINUTE, longest=4 * _HOUR),
    # Delivered or failed within hours, often the same morning: a change missed here is a
    # status customers and ops never see. Every tick, and never more than 30 minutes apart.
    Canonical.OUT_FOR_DELIVERY: Cadence(shortest=timedelta(0), longest=30 * _MINUTE),
    # A failed attempt: ops call the customer, the courier re-attempts or returns it, usually
    # the next day. Soon after it, and hourly at most.
    Canonical.NDR: Cadence(shortest=10 * _MINUTE, longest=_HOUR),
    # Returns: the CRM webhook fired on entry; what follows (returned to origin) is slow and
    # drives no customer message.
    Canonical.RTO_IN_TRANSIT: Cadence(shortest=30 * _MINUTE, longest=6 * _HOUR),
    Canonical.RTO: Cadence(shortest=_HOUR, longest=6 * _HOUR),
    # End states are tracked only if TRACKING_STATUS names them (the default does not).
    Canonical.DELIVERED: Cadence(shortest=6 * _HOUR, longest=24 * _HOUR),
    Canonical.LOST: Cadence(shortest=6 * _HOUR, longest=24 * _HOUR),
    Canonical.DESTROY: Cadence(shortest=6 * _HOUR, longest=24 * _HOUR),
    Canonical.BOOKING_CANCELLED: Cadence(shortest=6 * _HOUR, longest=24 * _HOUR),
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


def cadence(status: Canonical | str | None) -> Cadence:
    """The table's row for a status; non-canonical statuses share the not-picked-up row."""
    try:
        return CADENCES[Canonical(status)] if status is not None else CADENCES[None]
    except ValueError:
        return CADENCES[None]


def max_interval(status: Canonical | str | None) -> timedelta:
    """The longest an order in `status` waits between polls, whatever the courier said."""
    return cadence(status).longest


def is_near_delivery(courier_status: str | None) -> bool:
    """Whether the courier's last wording announces a change within hours."""
    return bool(courier_status) and normalise_raw_status(str(courier_status)) in NEAR_DELIVERY


def poll_interval(
    status: Canonical | str | None, unchanged_for: timedelta, courier_status: str | None
) -> timedelta:
    """How long after a poll the order is due again."""
    row = cadence(status)
    longest = row.longest
    if is_near_delivery(courier_status):
        longest = min(longest, NEAR_DELIVERY_LONGEST)
    grown = max(unchanged_for, timedelta(0)) * BACKOFF_SHARE
    return min(max(grown, row.shortest), longest)


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
