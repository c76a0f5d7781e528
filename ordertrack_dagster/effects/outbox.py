"""The durable outbox (contract §7): the `ordertrack_outbox` collection's operations.

The write path leaves a marker on the order, atomically with the status change. Draining
copies it into `ordertrack_outbox` under a deterministic `_id` (order + event), so draining
twice is a no-op and a crash between the status write and the send loses nothing. Per-run
deliveries (alert log, query log, email) are queued the same way under `kind:flow:run`.
Sending (`delivery.py`) claims due documents with a lease (two runs never send the same one),
records every attempt, and backs off across runs until a retry limit turns the document into
a dead letter that ops can see and re-queue. The documents' shapes are in `documents.py`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from pymongo import ASCENDING, IndexModel, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

from ordertrack_dagster.effects.documents import (
    ORDER_PROJECTION,
    Report,
    RetryPolicy,
    State,
    event_document,
    failure_update,
    report_document,
)
from ordertrack_dagster.markers import OUTBOX_FIELD, Event
from ordertrack_dagster.resources.mongo import (
    BULK_CHUNK,
    BulkLog,
    Rejected,
    bulk_update,
    ensure_indexes,
    update_many_idempotent,
)

OUTBOX_COLLECTION = "ordertrack_outbox"
CLAIM_LIMIT = 1_000
#: The fields a claim reads and then requires unchanged (see `Outbox.claim`).
_CLAIM_GUARD = ("_id", "state", "next_attempt_at", "lease_until")
DRAIN_BATCH = 1_000
#: The mail recipients an earlier attempt reached, so a retry after a partial refusal goes
#: only to the others (`effects/smtp.py`).
DELIVERED_TO = "delivered_to"
#: What a dead-letter notice names (`messages.dead_letter_text`) and its flag.
DEAD_NOTICE_FIELDS = ("kind", "order_id", "run_id", "last_error", "dead_alerted")


#: What a requeue reports of each dead letter it names.
DEAD_LETTER_FIELDS = ("flow", "kind", "order_id", "run_id", "dead_at", "last_error")


def dead_letter_filter(
    flows: Sequence[str],
    kinds: Sequence[str],
    dead_after: datetime | None = None,
    dead_before: datetime | None = None,
) -> dict[str, Any]:
    """The dead letters of these flows and kinds given up on between the two times (each
    bound optional): what ops re-queue once the cause is fixed."""
    query: dict[str, Any] = {
        "flow": {"$in": list(flows)},
        "state": State.DEAD.value,
        "kind": {"$in": list(kinds)},
    }
    age = {"$gte": dead_after, "$lt": dead_before}
    if bounds := {op: value for op, value in age.items() if value is not None}:
        query["dead_at"] = bounds
    return query


def _due(flow_key: str, now: datetime) -> dict[str, Any]:
    """The flow's deliveries a run may claim now: pending, their backoff over, not leased."""
    return {
        "flow": flow_key,
        "state": State.PENDING.value,
        "next_attempt_at": {"$lte": now},
        "$or": [{"lease_until": None}, {"lease_until": {"$lte": now}}],
    }


def waiting_effects(db: Database, flow_key: str, now: datetime) -> str | None:
    """What the flow's side effects have to do now that no tracking run brought: markers not
    drained (a tracking run that failed after writing some) or deliveries due (a retry whose
    backoff is over); None when there is nothing. Each query reads at most one document, on
    an index (the orders' sparse one on the markers, the outbox's (flow, state, ...))."""
    markers = {
        OUTBOX_FIELD: {"$exists": True},
        "$or": [{f"{OUTBOX_FIELD}.{event.value}.flow": flow_key} for event in Event],
    }
    if db["orders"].find_one(markers, {"_id": 1}) is not None:
        return "status changes whose markers were not drained into the outbox"
    if db[OUTBOX_COLLECTION].find_one(_due(flow_key, now), {"_id": 1}) is not None:
        return "deliveries due in the outbox (retries)"
    return None


class _Bulked(NamedTuple):
    """What a series of bulk writes matched, and the operations the server rejected."""

    matched: int
    rejected: list[Rejected]


def _marker_removal(
    order_id: Any, markers: dict[str, Any], ours: dict[str, dict[str, Any]]
) -> UpdateOne:
    """One update removing the markers copied, but only while none of the order's markers
    changed since they were read.

    The filter names each copied marker's `queued_at` and, when all of the order's markers
    were ours, requires every other event's marker to be absent; the whole object then goes
    (so the index on it stays small). A marker added or replaced meanwhile keeps them all,
    and the next drain copies them again (adding nothing) and removes them. Field by field,
    not the object as a whole: the filter must not depend on the order of its fields.
    """
    unchanged: dict[str, Any] = {
        f"{OUTBOX_FIELD}.{name}.queued_at": marker.get("queued_at") for name, marker in ours.items()
    }
    if len(ours) < len(markers):  # another flow's markers stay
        unset = {f"{OUTBOX_FIELD}.{name}": "" for name in ours}
        return UpdateOne({"_id": order_id, **unchanged}, {"$unset": unset})
    absent = {
        f"{OUTBOX_FIELD}.{event.value}": {"$exists": False} for event in Event if event not in ours
    }
    return UpdateOne({"_id": order_id, **unchanged, **absent}, {"$unset": {OUTBOX_FIELD: ""}})


class Outbox:
    """The `ordertrack_outbox` collection, seen by one asset execution (`owner` = its run)."""

    def __init__(
        self,
        db: Database,
        policy: RetryPolicy,
        owner: str,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.clock = clock  # the time of attempts and retries (tests move it)
        self.db = db
        self.collection = db[OUTBOX_COLLECTION]
        self.policy = policy
        self.owner = owner
        self._rng = rng or random.Random()

    def ensure_indexes(self) -> None:
        """Every query of a sending asset names the flow, a state and its kinds: with all
        three in the index, none reads the sent documents, which only grow."""
        keys = ["flow", "state", "kind", "next_attempt_at"]
        ensure_indexes(self.collection, [IndexModel([(key, ASCENDING) for key in keys])])

    def _bulk(self, ops: list[UpdateOne], collection: Collection | None = None) -> _Bulked:
        """Bulk by _id; a concurrent run's identical upsert is a no-op, not an error."""
        log = BulkLog()
        target = self.collection if collection is None else collection
        matched, _, _ = bulk_update(target, ops, log, DRAIN_BATCH)
        return _Bulked(matched, log.rejected)

    # -- queueing -----------------------------------------------------------------------

    def drain_markers(self, flow_key: str, now: datetime) -> tuple[Counter[str], list[str]]:
        """Copy this flow's order markers into the outbox, then remove exactly those markers.

        Returns the count per event and any rejected operations. The copy comes first: a crash
        in between leaves the marker, and the next drain's upsert of the same `_id` is a no-op.
        """
        marketplaces = {
            doc["_id"]: str(doc.get("name"))
            for doc in self.db["marketplaces"].find({}, {"name": 1})
        }
        events = {event.value: event for event in Event}
        inserts: list[UpdateOne] = []
        removals: list[UpdateOne] = []
        drained: Counter[str] = Counter()
        orders = self.db["orders"]
        marked = orders.find(
            {OUTBOX_FIELD: {"$exists": True}}, ORDER_PROJECTION, batch_size=DRAIN_BATCH
        )
        for order in marked:
            markers = order.get(OUTBOX_FIELD)
            if not isinstance(markers, dict):
                continue
            ours = {
                name: marker
                for name, marker in markers.items()
                if name in events and isinstance(marker, dict) and marker.get("flow") == flow_key
            }
            for name, marker in ours.items():
                doc = event_document(order, events[name], marker, marketplaces, now)
                inserts.append(UpdateOne({"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True))
                drained[name] += 1
            if ours or not markers:  # another flow's markers alone stay for its drain
                removals.append(_marker_removal(order["_id"], markers, ours))
        rejected = self._bulk(inserts).rejected
        if rejected:  # keep the markers of a failed copy: the next run tries again
            return drained, rejected
        return drained, self._bulk(removals, orders).rejected

    def enqueue_report(
        self,
        kind: Report,
        flow_key: str,
        run_id: str,
        content: dict[str, Any],
        now: datetime,
    ) -> bool:
        """Queue a run's report once; True when it is new (a re-run of the asset finds it)."""
        doc = report_document(kind, flow_key, run_id, content, now)
        result = self.collection.update_one({"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True)
        return result.upserted_id is not None

    def requeue_dead(self, flow_key: str, kinds: Sequence[str], now: datetime) -> int:
        """Ops' second chance: dead letters become due again with a fresh retry budget."""
        return self._requeue(dead_letter_filter([flow_key], kinds), now)

    def dead_letters(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        """The dead letters a `dead_letter_filter` names (what a requeue would change)."""
        return list(self.collection.find(query, DEAD_LETTER_FIELDS).sort("dead_at", ASCENDING))

    def requeue_ids(self, ids: Sequence[Any], now: datetime) -> int:
        """Requeue these dead letters (those still dead: one another run re-queued is
        skipped), `BULK_CHUNK` ids per update as every `$in` here."""
        ids = list(ids)
        return sum(
            self._requeue({"_id": {"$in": ids[i : i + BULK_CHUNK]}, "state": State.DEAD.value}, now)
            for i in range(0, len(ids), BULK_CHUNK)
        )

    def _requeue(self, query: dict[str, Any], now: datetime) -> int:
        # counted by the mark this update sets, should an answer be lost and it be sent again
        unchanged = {field: value for field, value in query.items() if field != "state"}
        return update_many_idempotent(
            self.collection,
            query,
            {
                "$set": {
                    "state": State.PENDING.value,
                    "failures": 0,
                    "next_attempt_at": now,
                    "dead_alerted": False,
                    "requeued_at": now,
                },
                # ops decided: the key horizon starts again with the next call
                "$unset": {"first_failure_at": "", "first_claimed_at": ""},
            },
            changed=unchanged | {"requeued_at": now},
        )

    # -- sending ------------------------------------------------------------------------

    def claim(
        self, flow_key: str, kinds: Sequence[str], now: datetime, limit: int = CLAIM_LIMIT
    ) -> list[dict[str, Any]]:
        """Lease the due documents to this owner; a concurrent run leases a disjoint set."""
        due = _due(flow_key, now) | {"kind": {"$in": list(kinds)}}
        seen = list(
            self.collection.find(due)
            .sort([("next_attempt_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        if not seen:
            return []
        until = now + timedelta(seconds=self.policy.lease_seconds)
        # as stored (milliseconds), so the documents returned below equal the stored ones
        until = until.replace(microsecond=until.microsecond // 1000 * 1000)
        lease = {"lease_owner": self.owner, "lease_until": until}
        # The first claim is when a call may first have reached the receiver: the policy's
        # key horizon counts from it (`RetryPolicy.key_forgotten_by`).
        first = {"first_claimed_at": now.replace(microsecond=now.microsecond // 1000 * 1000)}
        # Compare-and-set on what was read: another run's claim, a send or a retry changes
        # one of these fields, so the lease lands only on a document still due. Plain
        # equalities keep the update on the _id index; the `due` filter itself (its $or and
        # the flow/state index) made SecantusDB scan the outbox once per claimed document.
        leased = self._bulk(
            [
                UpdateOne(
                    {name: doc.get(name) for name in _CLAIM_GUARD},
                    {"$set": lease, "$min": first},
                )
                for doc in seen
            ]
        ).matched
        if leased == len(seen):  # all of them are ours: no need to read them again
            return [first | doc | lease for doc in seen]
        claimed = self.collection.find(  # a concurrent run took some: which are ours?
            {
                "lease_owner": self.owner,
                "lease_until": {"$gt": now},
                "state": State.PENDING.value,
                "flow": flow_key,
                "kind": {"$in": list(kinds)},
            }
        )
        return sorted(claimed, key=lambda doc: (doc["next_attempt_at"], doc["_id"]))

    def record(self, updates: list[UpdateOne]) -> None:
        """Write a group of attempt records (see `delivery.deliver`)."""
        self._bulk(updates)

    def failure(self, doc: dict[str, Any], attempt: dict[str, Any]) -> tuple[UpdateOne, int]:
        """The update recording a failed attempt under this outbox's policy; 1 if it is dead."""
        return failure_update(doc, attempt, self.policy, self._rng)

    def release(self, docs: Sequence[dict[str, Any]]) -> None:
        """Untried documents are due again at once: they did not fail."""
        self._bulk(
            [
                UpdateOne(
                    {"_id": doc["_id"], "lease_owner": self.owner}, {"$set": {"lease_until": None}}
                )
                for doc in docs
            ]
        )

    def note_delivered_to(self, doc_id: Any, addresses: Sequence[str]) -> None:
        """Remember who an attempt reached (a set: recording it twice changes nothing)."""
        if addresses:
            self.collection.update_one(
                {"_id": doc_id}, {"$addToSet": {DELIVERED_TO: {"$each": list(addresses)}}}
            )

    # -- retention ----------------------------------------------------------------------

    def purge_delivered(self, flow_key: str, older_than: datetime, now: datetime) -> int:
        """Strip the consignee data (phone, amount, report content, attempts) from documents
        sent before `older_than`. The document itself stays as a tombstone: its `_id` (order
        and event) is what keeps a second drain of the same event from sending it again."""
        return update_many_idempotent(
            self.collection,
            {
                "flow": flow_key,
                "state": State.SENT.value,
                "sent_at": {"$lt": older_than},
                "purged_at": {"$exists": False},
            },
            {
                "$unset": {"order": "", "content": "", "attempts": "", "last_error": ""},
                "$set": {"purged_at": now},
            },
            changed={"flow": flow_key, "purged_at": now},
        )

    # -- what ops see -------------------------------------------------------------------

    def counts(self, flow_key: str, kinds: Sequence[str]) -> dict[str, int]:
        """The documents waiting (pending; retrying: pending after a failed attempt) and the
        dead letters. Sent ones are not counted: they only grow (each stays as a tombstone),
        and each run reports what it sent.

        One query per state, each on the index's prefix (flow, state, kinds): one query
        grouping the states would read every sent document on some servers.
        """
        theirs = {"flow": flow_key, "kind": {"$in": list(kinds)}}
        waiting = theirs | {"state": State.PENDING.value}
        group = {
            "_id": None,
            "n": {"$sum": 1},
            "retrying": {"$sum": {"$cond": [{"$gt": ["$failures", 0]}, 1, 0]}},
        }
        rows = list(self.collection.aggregate([{"$match": waiting}, {"$group": group}]))
        dead = self.collection.count_documents(theirs | {"state": State.DEAD.value})
        return {
            State.PENDING.value: int(rows[0]["n"]) if rows else 0,
            "retrying": int(rows[0]["retrying"]) if rows else 0,
            State.DEAD.value: dead,
        }

    def unalerted_dead(self, flow_key: str, kinds: Sequence[str]) -> list[dict[str, Any]]:
        """Dead letters not yet announced, with what the notice names. The query stays on
        the index's prefix and the flag is checked here (an inequality made some servers
        read the whole outbox); dead letters stay until ops re-queue them, so only the few
        fields a notice needs are read."""
        dead = self.collection.find(
            {"flow": flow_key, "state": State.DEAD.value, "kind": {"$in": list(kinds)}},
            dict.fromkeys(DEAD_NOTICE_FIELDS, 1),
        )
        return [doc for doc in dead if doc.get("dead_alerted") is not True]

    def mark_dead_alerted(self, docs: Sequence[dict[str, Any]]) -> None:
        self._bulk(
            [UpdateOne({"_id": doc["_id"]}, {"$set": {"dead_alerted": True}}) for doc in docs]
        )
