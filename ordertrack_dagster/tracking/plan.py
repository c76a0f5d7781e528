"""Contract §6, the plan: what to write for each mapped row, as MongoDB updates (pure; only
`StatusCatalogue.load` reads the database).

`plan_writes` decides per polled order what to write and builds one operation per order;
`follow_op` and `synced_op` are the orderTracking upsert and the clearing of the order's mark
that the sync sends. The write path (`writer.py`) sends
them and reads back what MongoDB did. The guards inside the updates repeat the transition
rule of `statuses.py` in MongoDB, so a concurrent run, a stale snapshot or an out-of-order
answer can never move an order backwards or append a History entry twice.

orderTracking follows the order: every write that leaves the order's status differing from
the one orderTracking was last brought to marks the order (`TRACKING_DUE_FIELD`, in the same
update), and the order's `last_tracking_time` is the version orderTracking is synced by: no
write moves it back, every write that leaves a status to sync moves it on.

Side effects are not sent here. A status change the event declarations (`markers.py`) give
an effect leaves a marker in the same document update (`ordertrack_outbox.<event>`),
atomically with the status change; the effects assets drain those markers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pandas as pd
from bson import ObjectId
from pymongo import UpdateOne
from pymongo.database import Database

from ordertrack_dagster.markers import OUTBOX_FIELD, Event, Transition, events_for, marker
from ordertrack_dagster.polling import (
    ASKED_FIELD,
    NEXT_POLL_FIELD,
    STATUS_CHANGED_FIELD,
    next_poll_at,
)
from ordertrack_dagster.records import Outcome
from ordertrack_dagster.statuses import (
    Canonical,
    is_allowed,
    refused_predecessors,
    timestamp_key,
)
from ordertrack_dagster.tables import Action
from ordertrack_dagster.tracking.mapping import stored_time

#: Set on an order whose orderTracking must be brought to its status: the History time to use.
TRACKING_DUE_FIELD = "ordertrack_tracking_due"
#: The status id orderTracking was last brought to (orders whose status equals it need nothing).
TRACKING_SYNCED_FIELD = "ordertrack_tracking_synced"
#: For the length of one status update only: whether the stored status allows the move. The
#: guard is evaluated once, in the update's first stage, and read by every field it decides;
#: the last stage removes it, so no document keeps it.
MOVE_ALLOWED_FIELD = "ordertrack_move_allowed"
_ALLOWED = f"${MOVE_ALLOWED_FIELD}"
#: On orderTracking: the order's `last_tracking_time` it was brought up to date with, so a
#: slower run that read the order earlier cannot put back an older status.
SYNCED_AT_FIELD = "ordertrack_synced_at"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class StatusCatalogue:
    """The `status` collection: canonical name <-> status_id and document _id."""

    ids: dict[Canonical, int]
    object_ids: dict[Canonical, ObjectId]

    @classmethod
    def load(cls, db: Database) -> StatusCatalogue:
        ids: dict[Canonical, int] = {}
        object_ids: dict[Canonical, ObjectId] = {}
        names = {status.value: status for status in Canonical}
        for doc in db["status"].find({"name": {"$in": list(names)}}):
            status = names[doc["name"]]
            ids[status] = int(doc["status_id"])
            object_ids[status] = doc["_id"]
        return cls(ids=ids, object_ids=object_ids)

    def name_of(self, status_id: int | None) -> Canonical | None:
        """The canonical status behind an id; None for non-canonical ids (booked, ...)."""
        for status, known in self.ids.items():
            if known == status_id:
                return status
        return None


@dataclass(frozen=True)
class PolledOrder:
    """One row of the mapped status updates, as the writer needs it."""

    order_oid: ObjectId
    order_id: str
    tracking_key: str
    current_status_id: int | None
    booked_at: datetime | None
    outcome: Outcome
    courier_status: str | None
    status: Canonical | None
    event_time: datetime | None
    stop_tracking: bool = False
    #: as stored when selected (`ordertrack_status_changed_at`); None before it was first set
    status_changed_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    order_oid: ObjectId
    action: Action
    from_status: str | None
    to_status: str | None
    events: tuple[Event, ...] = ()
    alert: str | None = None
    #: the time of the write that decided it (the `last_tracking_time` it wrote); detection
    #: delay is measured to it
    written_at: datetime | None = None


@dataclass
class WritePlan:
    order_ops: list[UpdateOne] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    #: the status id each planned status change moves its order to
    changes: dict[ObjectId, int] = field(default_factory=dict)


def polled_orders(updates: pd.DataFrame) -> list[PolledOrder]:
    """The writer's view of the mapped rows."""
    orders = []
    for row in updates.itertuples(index=False):
        orders.append(
            PolledOrder(
                order_oid=ObjectId(row.order_oid),
                order_id=str(row.order_id),
                tracking_key=row.tracking_key,
                current_status_id=None
                if pd.isna(row.current_status_id)
                else int(row.current_status_id),
                booked_at=None
                if pd.isna(row.booked_at)
                else pd.Timestamp(row.booked_at).to_pydatetime(),
                outcome=Outcome(row.outcome),
                courier_status=None if pd.isna(row.courier_status) else row.courier_status,
                status=None if pd.isna(row.status) else Canonical(row.status),
                event_time=None
                if pd.isna(row.event_time)
                else pd.Timestamp(row.event_time).to_pydatetime(),
                stop_tracking=bool(row.stop_tracking),
                status_changed_at=stored_time(row, "status_changed_at"),
            )
        )
    return orders


def _literal(value: Any) -> dict[str, Any]:
    """Values inside pipeline updates must not be read as field paths (`$`-prefixed text)."""
    return {"$literal": value}


def _poll_fields(order: PolledOrder, now: datetime) -> dict[str, Any]:
    """What recording a poll writes, whatever becomes of the status (contract §6), as pipeline
    values; `last_tracking_time` is the caller's (it is also the order's version)."""
    fields: dict[str, Any] = {ASKED_FIELD: now}
    if order.courier_status is not None:
        fields["courier_status"] = order.courier_status
    if order.stop_tracking:
        fields["being_tracked"] = False
    return {name: _literal(value) for name, value in fields.items()}


def _next_poll_unchanged(
    order: PolledOrder, current: Canonical | None, now: datetime
) -> datetime | None:
    """The order's next poll when its status stays as it is (polling.py)."""
    return next_poll_at(current, order.status_changed_at, now, order.courier_status)


def _changed_at_unless_set(now: datetime) -> dict[str, Any]:
    """The stored change time; an order tracked before the field existed starts counting now."""
    return {"$ifNull": [f"${STATUS_CHANGED_FIELD}", _literal(now)]}


def _poll_op(
    order: PolledOrder, current: Canonical | None, now: datetime, moves: _Moves
) -> UpdateOne:
    fields = _poll_fields(order, now)
    fields["last_tracking_time"] = moves.poll_time("$order_status")
    fields[TRACKING_DUE_FIELD] = moves.due_unless_synced
    fields[NEXT_POLL_FIELD] = _literal(_next_poll_unchanged(order, current, now))
    fields[STATUS_CHANGED_FIELD] = _changed_at_unless_set(now)
    return UpdateOne({"_id": order.order_oid}, [{"$set": fields}])


class _Moves:
    """The update expressions of a move to each status, built once per plan.

    Every order moving to the same status shares them; only the order's own values are built
    per order. A 36,000-order plan otherwise spends seconds building (and garbage-collecting)
    identical nested expressions.
    """

    def __init__(self, catalogue: StatusCatalogue, now: datetime) -> None:
        self._catalogue = catalogue
        self._now = now
        self._orders: dict[Canonical, tuple[dict[str, Any], dict[str, Any]]] = {}
        due = f"${TRACKING_DUE_FIELD}"
        synced = {"$ifNull": [f"${TRACKING_SYNCED_FIELD}", None]}
        #: Marks the order when orderTracking was not brought to its stored status (a status
        #: another system set, or an earlier crash); an existing mark keeps its time.
        self.due_unless_synced = {
            "$cond": [
                {"$eq": ["$order_status", synced]},
                due,
                {"$ifNull": [due, _literal(now)]},
            ]
        }
        self._synced = synced
        stored = "$last_tracking_time"
        stored_time = {"$cond": [{"$eq": [{"$type": stored}, "date"]}, stored, None]}
        #: never back: a writer that planned earlier than one already applied keeps its time
        self._not_back = {"$max": [_literal(now), stored_time]}
        #: strictly after the stored time: a new version of the order's status
        self._after = {"$max": [_literal(now), {"$add": [stored_time, 1]}]}

    def poll_time(self, status_after: Any) -> dict[str, Any]:
        """`last_tracking_time`, which is also the version orderTracking is synced by: never
        earlier than the stored one, and later than it whenever the write leaves the order
        with a status orderTracking was not brought to (`status_after`, the stored status
        after this update), so two different statuses never share a version."""
        unsynced = {"$ne": [status_after, self._synced]}
        return {"$cond": [unsynced, self._after, self._not_back]}

    def status_id(self, status: Canonical) -> int:
        return self._catalogue.ids[status]

    def order(self, new: Canonical) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the guard: the stored status allows the move, the status fields under it, which
        read the guard's value from `MOVE_ALLOWED_FIELD`)."""
        if new not in self._orders:
            catalogue = self._catalogue
            refused = [catalogue.ids[s] for s in refused_predecessors(new) if s in catalogue.ids]
            new_oid = _literal(catalogue.object_ids[new])
            history = "$order_status_map"
            stamp = f"tracking_timestamps.{timestamp_key(new)}"
            changes: dict[str, Any] = {
                "order_status": _literal(catalogue.ids[new]),
                # append only when different from the last element; a non-array is left alone
                "order_status_map": {
                    "$cond": [
                        {"$isArray": history},
                        {
                            "$cond": [
                                {"$eq": [{"$arrayElemAt": [history, -1]}, new_oid]},
                                history,
                                {"$concatArrays": [history, [new_oid]]},
                            ]
                        },
                        {"$ifNull": [history, [new_oid]]},
                    ]
                },
                stamp: {"$ifNull": [f"${stamp}", _literal(self._now)]},
            }
            guard = {"$not": [{"$in": ["$order_status", _literal(refused)]}]}
            guarded = {
                name: {"$cond": [_ALLOWED, value, f"${name}"]} for name, value in changes.items()
            }
            self._orders[new] = (guard, guarded)
        return self._orders[new]


@cache
def _first_entry(statuses: frozenset[Canonical]) -> dict[str, Any]:
    """On the stored document: the order never entered any of `statuses` (their
    `tracking_timestamps` are unset), the guard the earlier service had on the CRM webhook."""
    return {
        "$and": [
            {"$eq": [{"$ifNull": [f"$tracking_timestamps.{timestamp_key(status)}", None]}, None]}
            for status in sorted(statuses)
        ]
    }


def _queued_markers(
    events: Sequence[Event], status: Canonical, flow_key: str, tracking_key: str, now: datetime
) -> list[Any]:
    """Each event's marker, under its first-entry guard when its trigger has one."""
    queued: list[Any] = []
    for event in events:
        one = {event.value: _literal(marker(status.value, flow_key, tracking_key, now))}
        trigger = event.trigger
        queued.append(
            {"$cond": [_first_entry(trigger.statuses), one, {}]} if trigger.first_entry else one
        )
    return queued


def _status_op(
    order: PolledOrder,
    current: Canonical | None,
    new: Canonical,
    moves: _Moves,
    events: Sequence[Event],
    flow_key: str,
    now: datetime,
) -> UpdateOne:
    """The poll and the status change as one update of the order.

    The poll fields always land; the status fields change only if the stored status still
    allows the move (MongoDB evaluates the guard on the stored document, so a concurrent run
    or a stale snapshot cannot move the order backwards). One operation instead of a poll
    update plus a conditional one halves the writes of a changed order. The guard is
    evaluated once (`MOVE_ALLOWED_FIELD`) rather than in each of the fields it decides:
    the embedded database's cost of an update grows with the size of its expressions.
    """
    guard, guarded = moves.order(new)
    fields = _poll_fields(order, now)
    fields.update(guarded)
    fields["last_tracking_time"] = moves.poll_time(guarded["order_status"])
    # orderTracking gets the answer's time; the mark is in the same atomic update
    changed_at = order.event_time or now
    entry_time = _literal(changed_at)
    fields[TRACKING_DUE_FIELD] = {"$cond": [_ALLOWED, entry_time, moves.due_unless_synced]}
    # the next poll follows the status MongoDB leaves: the new one when the guard lets the
    # move through or another run already made it, else the one the snapshot saw
    moved = next_poll_at(new, changed_at, now, order.courier_status)
    stayed = _next_poll_unchanged(order, current, now)
    arrived = {"$or": [_ALLOWED, {"$eq": ["$order_status", _literal(moves.status_id(new))]}]}
    fields[NEXT_POLL_FIELD] = {"$cond": [arrived, _literal(moved), _literal(stayed)]}
    fields[STATUS_CHANGED_FIELD] = {"$cond": [_ALLOWED, entry_time, _changed_at_unless_set(now)]}
    if events:
        queued = _queued_markers(events, new, flow_key, order.tracking_key, now)
        merged = {"$mergeObjects": [{"$ifNull": [f"${OUTBOX_FIELD}", {}]}, *queued]}
        fields[OUTBOX_FIELD] = {"$cond": [_ALLOWED, merged, f"${OUTBOX_FIELD}"]}
    # the second stage reads the stored document as the first left it: the guard added
    stages = [{"$set": {MOVE_ALLOWED_FIELD: guard}}, {"$set": fields}]
    return UpdateOne({"_id": order.order_oid}, [*stages, {"$unset": MOVE_ALLOWED_FIELD}])


def follow_op(order_oid: ObjectId, status: Canonical, at: Any, version: Any) -> UpdateOne:
    """Upsert orderTracking to the order's stored status: currentStatus, and a History entry
    unless the last one has that status. `version` (the order's last write time as read)
    keeps a run that read the order earlier from putting back an older status."""
    fresh = {"$lte": [{"$ifNull": [f"${SYNCED_AT_FIELD}", _literal(_EPOCH)]}, _literal(version)]}
    last_status = {
        "$getField": {
            "field": "status",
            "input": {"$arrayElemAt": [{"$ifNull": ["$History", []]}, -1]},
        }
    }
    append = {"$and": [fresh, {"$ne": [last_status, _literal(status.value)]}]}
    entry = {"status": status.value, "timeStamp": at}
    history = {"$concatArrays": [{"$ifNull": ["$History", []]}, [_literal(entry)]]}
    changes = {
        "History": {"$cond": [append, history, "$History"]},
        "currentStatus": {"$cond": [fresh, _literal(status.value), "$currentStatus"]},
        SYNCED_AT_FIELD: {"$cond": [fresh, _literal(version), f"${SYNCED_AT_FIELD}"]},
    }
    return UpdateOne({"orderId": order_oid}, [{"$set": changes}], upsert=True)


def synced_op(order_oid: ObjectId, read: dict[str, Any]) -> UpdateOne:
    """Clear the order's mark once its orderTracking was brought to the version `read`
    (`order_status`, `last_tracking_time` and the mark as the sync read them), and record the
    status synced; an order that moved on since keeps its mark for the next sync.

    The version check is in the update, not the filter: found by `_id` alone, the order is
    looked up by its primary key on any server (the embedded database scans for a filter on
    more fields: twice the cost of the update itself). Missing and null compare alike, as they
    would in a filter."""
    still = {
        "$and": [
            {"$eq": [{"$ifNull": [f"${name}", None]}, _literal(value)]}
            for name, value in read.items()
        ]
    }
    status_id = read["order_status"]
    changes = {
        TRACKING_SYNCED_FIELD: {"$cond": [still, _literal(status_id), f"${TRACKING_SYNCED_FIELD}"]},
        TRACKING_DUE_FIELD: {"$cond": [still, "$$REMOVE", f"${TRACKING_DUE_FIELD}"]},
    }
    return UpdateOne({"_id": order_oid}, [{"$set": changes}])


def _unchanged(
    order: PolledOrder,
    current: Canonical | None,
    from_status: str | None,
    new: Canonical | None,
    catalogue: StatusCatalogue,
    now: datetime,
) -> Decision | None:
    """The decision for an answer that leaves the status alone (the poll is still recorded);
    None when the answer moves the order."""
    if new is None or new == current:
        return Decision(
            order.order_oid, Action.POLL_RECORDED, from_status, from_status, written_at=now
        )
    if new not in catalogue.ids:
        return Decision(
            order.order_oid,
            Action.POLL_RECORDED,
            from_status,
            from_status,
            alert=f"status {new.value!r} is missing from the status collection",
            written_at=now,
        )
    if not is_allowed(current, new):
        return Decision(
            order.order_oid,
            Action.REFUSED,
            from_status,
            new.value,
            alert=f"refused move {from_status!r} -> {new.value!r} (would go backwards)",
            written_at=now,
        )
    return None


def plan_writes(
    orders: Iterable[PolledOrder],
    catalogue: StatusCatalogue,
    flow_key: str,
    now: datetime,
) -> WritePlan:
    """Decide, per polled order, what contract §6 asks to write; build the bulk operations."""
    plan = WritePlan()
    moves = _Moves(catalogue, now)
    for order in orders:
        current = catalogue.name_of(order.current_status_id)
        from_status = current.value if current else _as_text(order.current_status_id)
        if not order.outcome.was_read:
            if order.stop_tracking:
                plan.order_ops.append(_poll_op(order, current, now, moves))
            elif order.outcome is not Outcome.DEFERRED:  # asked in vain: behind the unasked
                asked = {
                    ASKED_FIELD: now,
                    NEXT_POLL_FIELD: _next_poll_unchanged(order, current, now),
                }
                # an order the courier keeps not answering backs off like an unchanged one
                since = {STATUS_CHANGED_FIELD: now}
                update = {"$set": asked, "$min": since}
                plan.order_ops.append(UpdateOne({"_id": order.order_oid}, update))
            plan.decisions.append(
                Decision(order.order_oid, Action.UNTOUCHED, from_status, None, written_at=now)
            )
            continue
        new = order.status if order.outcome is Outcome.MAPPED else None
        unchanged = _unchanged(order, current, from_status, new, catalogue, now)
        if unchanged is not None:
            plan.order_ops.append(_poll_op(order, current, now, moves))
            plan.decisions.append(unchanged)
            continue
        events = events_for(Transition(flow_key, new, order.booked_at, order.event_time))
        plan.order_ops.append(_status_op(order, current, new, moves, events, flow_key, now))
        plan.changes[order.order_oid] = catalogue.ids[new]
        plan.decisions.append(
            Decision(
                order.order_oid,
                Action.STATUS_CHANGED,
                from_status,
                new.value,
                events,
                written_at=now,
            )
        )
    return plan


def _as_text(value: Any) -> str | None:
    return None if value is None else str(value)
