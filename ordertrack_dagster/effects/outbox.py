"""The durable outbox (SPEC §7): every side effect is a MongoDB document before it is sent.

The write path leaves a marker on the order, atomically with the status change. Draining
copies it into `ordertrack_outbox` under a deterministic `_id` (order + event), so draining
twice is a no-op and a crash between the status write and the send loses nothing. Per-run
deliveries (alert log, query log, email) are queued the same way under `kind:flow:run`.
Sending then claims due documents with a lease (two runs never send the same one), records
every attempt as soon as it is made, and backs off across runs until a retry limit turns the
document into a dead letter that ops can see and re-queue. Giving up is a matter of time,
not of attempts (72 hours of failures by default), so a long outage of a service does not
turn its deliveries into dead letters; and one run's sending is time-boxed, so a slow
service cannot hold the run (and the flow's next tick) for hours.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

from ordertrack_dagster.markers import OUTBOX_FIELD, Event
from ordertrack_dagster.resources.mongo import BulkLog, bulk_update

OUTBOX_COLLECTION = "ordertrack_outbox"
CLAIM_LIMIT = 1_000
#: The fields a claim reads and then requires unchanged (see `Outbox.claim`).
_CLAIM_GUARD = ("_id", "state", "next_attempt_at", "lease_until")
DRAIN_BATCH = 1_000
# This many transient failures in a row (the service is down) stop the run's sending: the
# rest stays due for the next run instead of each waiting for its own time-out.
BREAKER_THRESHOLD = 3
#: Attempts are recorded in groups of at most this many messages, or of what was sent within
#: this many seconds (see `Outbox.deliver`).
RECORD_EVERY = 50
RECORD_WITHIN_SECONDS = 1.0
KEPT_ATTEMPTS = 20
KEPT_ERRORS = 10

# What a drained order document must carry for the messages and the CRM payload.
_ORDER_PROJECTION = {
    OUTBOX_FIELD: 1,
    "order_id": 1,
    "customer.phone": 1,
    "total_amt": 1,
    "marketplace": 1,
}


class State(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


class Report(StrEnum):
    """Deliveries made once per flow run, beside the per-order events of `markers.Event`."""

    ALERT_LOG = "alert_log"
    QUERY_LOG = "query_log"
    EMAIL_SUMMARY = "email_summary"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a failing delivery is tried again."""

    give_up_after_seconds: float = 72 * 3600.0  # from the first failed attempt
    base_seconds: float = 60.0
    cap_seconds: float = 6 * 3600.0
    lease_seconds: float = 30 * 60.0
    #: One run's sending of one effect stops after this long; the rest stays due.
    send_budget_seconds: float = 60.0

    @property
    def give_up_after_hours(self) -> float:
        return self.give_up_after_seconds / 3600

    def delay(self, failures: int, rng: random.Random) -> timedelta:
        """Exponential backoff with jitter, so a recovering service is not hit all at once."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** max(0, failures - 1))
        return timedelta(seconds=ceiling * rng.uniform(0.5, 1.0))


class DeliveryError(Exception):
    """One delivery failed. A transient one (timeout, refused, 5xx) may trip the breaker."""

    def __init__(self, message: str, *, http_status: int | None = None, transient: bool = True):
        super().__init__(message)
        self.http_status = http_status
        self.transient = transient


class DeliveryDeferred(Exception):
    """The service asked us to come back later (Slack's 429): not a failure, no retry count."""

    def __init__(self, message: str, retry_at: datetime, http_status: int | None = None):
        super().__init__(message)
        self.retry_at = retry_at
        self.http_status = http_status


#: Sends one outbox document; returns the HTTP status (None when the protocol has none).
Sender = Callable[[dict[str, Any]], int | None]


@dataclass
class DeliveryReport:
    """What one run's sending did, for the asset's metadata and log."""

    sent: int = 0
    failed: int = 0
    deferred: int = 0
    not_attempted: int = 0
    became_dead: int = 0
    errors: list[str] = field(default_factory=list)
    stopped: str | None = None  # why sending stopped early (rate limit, service down)

    def note(self, message: str) -> None:
        if message not in self.errors and len(self.errors) < KEPT_ERRORS:
            self.errors.append(message)


def event_id(order_oid: ObjectId, event: str) -> str:
    """One outbox document per order and event: a second drain finds it already there."""
    return f"{order_oid}:{event}"


def idempotency_key(order_oid: ObjectId, event: str) -> str:
    """Stable per order and event, so the receiver can drop a repeat of a timed-out call."""
    return f"ordertrack-{event}-{order_oid}"


def report_id(kind: Report, flow_key: str, run_id: str) -> str:
    return f"{kind}:{flow_key}:{run_id}"


def event_document(
    order: dict[str, Any],
    event: Event,
    marker: dict[str, Any],
    marketplaces: dict[Any, str],
    now: datetime,
) -> dict[str, Any]:
    """The outbox document for one drained marker (pure)."""
    oid = order["_id"]
    return {
        "_id": event_id(oid, event),
        "kind": event.value,
        "flow": marker.get("flow"),
        "state": State.PENDING.value,
        "order_oid": oid,
        "order_id": order.get("order_id"),
        "tracking_key": marker.get("tracking_key"),
        "status": marker.get("status"),
        "queued_at": marker.get("queued_at"),
        "order": {
            "phone": (order.get("customer") or {}).get("phone"),
            "marketplace": marketplaces.get(order.get("marketplace")),
            "total_amt": order.get("total_amt"),
        },
        "idempotency_key": idempotency_key(oid, event),
        "created_at": now,
        "next_attempt_at": now,
        "failures": 0,
        "attempts": [],
    }


def _attempt(
    started_at: datetime,
    started: float,
    outcome: str,
    http_status: int | None,
    error: str | None,
) -> dict[str, Any]:
    return {
        "at": started_at,
        "outcome": outcome,
        "http_status": http_status,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "error": error,
    }


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
        self._clock = clock  # the time of attempts and retries (tests move it)
        self._db = db
        self.collection = db[OUTBOX_COLLECTION]
        self.policy = policy
        self.owner = owner
        self._rng = rng or random.Random()

    def ensure_indexes(self) -> None:
        self.collection.create_index(
            [("flow", ASCENDING), ("state", ASCENDING), ("next_attempt_at", ASCENDING)]
        )

    def _bulk(self, ops: list[UpdateOne], collection: Collection | None = None) -> BulkLog:
        """Bulk by _id; a concurrent run's identical upsert is a no-op, not an error."""
        log = BulkLog()
        bulk_update(self.collection if collection is None else collection, ops, log, DRAIN_BATCH)
        return log

    # -- queueing -----------------------------------------------------------------------

    def drain_markers(self, flow_key: str, now: datetime) -> tuple[Counter[str], list[str]]:
        """Copy this flow's order markers into the outbox, then remove exactly those markers.

        Returns the count per event and any rejected operations. The copy comes first: a crash
        in between leaves the marker, and the next drain's upsert of the same `_id` is a no-op.
        """
        marketplaces = {
            doc["_id"]: str(doc.get("name"))
            for doc in self._db["marketplaces"].find({}, {"name": 1})
        }
        events = {event.value: event for event in Event}
        inserts: list[UpdateOne] = []
        marker_unsets: list[UpdateOne] = []
        empty_unsets: list[UpdateOne] = []
        drained: Counter[str] = Counter()
        orders = self._db["orders"]
        marked = orders.find(
            {OUTBOX_FIELD: {"$exists": True}}, _ORDER_PROJECTION, batch_size=DRAIN_BATCH
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
                # only the marker we copied: a newer one written meanwhile stays
                queued_at = f"{OUTBOX_FIELD}.{name}.queued_at"
                marker_unsets.append(
                    UpdateOne(
                        {"_id": order["_id"], queued_at: marker.get("queued_at")},
                        {"$unset": {f"{OUTBOX_FIELD}.{name}": ""}},
                    )
                )
                drained[name] += 1
            if len(ours) == len(markers):  # an emptied object goes too: the index stays small
                empty_unsets.append(
                    UpdateOne(
                        {"_id": order["_id"], OUTBOX_FIELD: {}}, {"$unset": {OUTBOX_FIELD: ""}}
                    )
                )
        rejected = self._bulk(inserts).rejected
        if rejected:  # keep the markers of a failed copy: the next run tries again
            return drained, rejected
        return drained, (
            self._bulk(marker_unsets, orders).rejected + self._bulk(empty_unsets, orders).rejected
        )

    def enqueue_report(
        self,
        kind: Report,
        flow_key: str,
        run_id: str,
        content: dict[str, Any],
        now: datetime,
    ) -> bool:
        """Queue a run's report once; True when it is new (a re-run of the asset finds it)."""
        doc = {
            "_id": report_id(kind, flow_key, run_id),
            "kind": kind.value,
            "flow": flow_key,
            "run_id": run_id,
            "state": State.PENDING.value,
            "content": content,
            "created_at": now,
            "next_attempt_at": now,
            "failures": 0,
            "attempts": [],
        }
        result = self.collection.update_one({"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True)
        return result.upserted_id is not None

    def requeue_dead(self, flow_key: str, kinds: Sequence[str], now: datetime) -> int:
        """Ops' second chance: dead letters become due again with a fresh retry budget."""
        result = self.collection.update_many(
            {"flow": flow_key, "kind": {"$in": list(kinds)}, "state": State.DEAD.value},
            {
                "$set": {
                    "state": State.PENDING.value,
                    "failures": 0,
                    "next_attempt_at": now,
                    "dead_alerted": False,
                },
                "$unset": {"first_failure_at": ""},
            },
        )
        return result.modified_count

    # -- sending ------------------------------------------------------------------------

    def _due(self, flow_key: str, kinds: Sequence[str], now: datetime) -> dict[str, Any]:
        return {
            "flow": flow_key,
            "kind": {"$in": list(kinds)},
            "state": State.PENDING.value,
            "next_attempt_at": {"$lte": now},
            "$or": [{"lease_until": None}, {"lease_until": {"$lte": now}}],
        }

    def claim(
        self, flow_key: str, kinds: Sequence[str], now: datetime, limit: int = CLAIM_LIMIT
    ) -> list[dict[str, Any]]:
        """Lease the due documents to this owner; a concurrent run leases a disjoint set."""
        due = self._due(flow_key, kinds, now)
        seen = (
            self.collection.find(due, list(_CLAIM_GUARD))
            .sort([("next_attempt_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        lease = {
            "lease_owner": self.owner,
            "lease_until": now + timedelta(seconds=self.policy.lease_seconds),
        }
        # Compare-and-set on what was read: another run's claim, a send or a retry changes
        # one of these fields, so the lease lands only on a document still due. Plain
        # equalities keep the update on the _id index; the `due` filter itself (its $or and
        # the flow/state index) made SecantusDB scan the outbox once per claimed document.
        self._bulk(
            [
                UpdateOne({name: doc.get(name) for name in _CLAIM_GUARD}, {"$set": lease})
                for doc in seen
            ]
        )
        claimed = self.collection.find(
            {
                "lease_owner": self.owner,
                "lease_until": {"$gt": now},
                "state": State.PENDING.value,
                "flow": flow_key,
                "kind": {"$in": list(kinds)},
            }
        )
        return sorted(claimed, key=lambda doc: (doc["next_attempt_at"], doc["_id"]))

    def deliver(self, docs: Iterable[dict[str, Any]], send: Sender) -> DeliveryReport:
        """Send each claimed document once, recording the attempts in small groups.

        A group is written after `RECORD_EVERY` messages or `RECORD_WITHIN_SECONDS` after its
        first, whichever comes first, and before sending stops for any reason: a crash can
        repeat at most the unrecorded group (the CRM drops even those by their idempotency
        key), and the recording costs a round trip per group, not per message.
        """
        report = DeliveryReport()
        in_a_row = 0
        box_ends = time.monotonic() + self.policy.send_budget_seconds
        untried: list[dict[str, Any]] = []
        unrecorded: list[UpdateOne] = []
        oldest = 0.0
        try:
            for doc in docs:
                if report.stopped is None and time.monotonic() >= box_ends:
                    report.stopped = f"time box of {self.policy.send_budget_seconds:g} s used up"
                if report.stopped is not None:
                    untried.append(doc)
                    continue
                started_at, started = self._clock(), time.perf_counter()
                if not unrecorded:
                    oldest = started
                try:
                    http_status = send(doc)
                except DeliveryDeferred as deferred:
                    attempt = _attempt(
                        started_at, started, "deferred", deferred.http_status, str(deferred)
                    )
                    unrecorded.append(
                        self._outcome(doc, attempt, {"next_attempt_at": deferred.retry_at})
                    )
                    report.deferred += 1
                    report.stopped = str(deferred)
                except Exception as error:  # one bad delivery must not strand the others
                    failure = (
                        error
                        if isinstance(error, DeliveryError)
                        else DeliveryError(f"{type(error).__name__}: {error}", transient=False)
                    )
                    attempt = _attempt(
                        started_at, started, "failed", failure.http_status, str(failure)
                    )
                    update, dead = self._failure(doc, attempt)
                    unrecorded.append(update)
                    report.failed += 1
                    report.became_dead += dead
                    report.note(str(failure))
                    in_a_row = in_a_row + 1 if failure.transient else 0
                    if in_a_row >= BREAKER_THRESHOLD:
                        report.stopped = f"{in_a_row} failures in a row, the service looks down"
                else:
                    attempt = _attempt(started_at, started, "sent", http_status, None)
                    unrecorded.append(
                        self._outcome(
                            doc,
                            attempt,
                            {"state": State.SENT.value, "sent_at": attempt["at"]},
                            unset=("content",),  # the report now lives where it was sent
                        )
                    )
                    report.sent += 1
                    in_a_row = 0
                if (
                    len(unrecorded) >= RECORD_EVERY
                    or time.perf_counter() - oldest >= RECORD_WITHIN_SECONDS
                ):
                    group, unrecorded = unrecorded, []  # a failed write is not tried twice
                    self._bulk(group)
        finally:
            self._bulk(unrecorded)
        self._release(untried)
        report.not_attempted = len(untried)
        return report

    def _outcome(
        self,
        doc: dict[str, Any],
        attempt: dict[str, Any],
        changes: dict[str, Any],
        inc: dict[str, int] | None = None,
        unset: Sequence[str] = (),
    ) -> UpdateOne:
        """The update that records one attempt and ends this run's lease on the document."""
        update: dict[str, Any] = {
            "$set": {**changes, "lease_until": None, "last_error": attempt["error"]},
            "$push": {"attempts": {"$each": [attempt], "$slice": -KEPT_ATTEMPTS}},
        }
        if inc:
            update["$inc"] = inc
        if unset:
            update["$unset"] = {name: "" for name in unset}
        return UpdateOne({"_id": doc["_id"]}, update)

    def _failure(self, doc: dict[str, Any], attempt: dict[str, Any]) -> tuple[UpdateOne, int]:
        """Count the failure; back off, or give up (1 returned) once the document has been
        failing for the policy's time (a long outage of the service is outlasted)."""
        failures = int(doc.get("failures", 0)) + 1
        first = doc.get("first_failure_at") or attempt["at"]
        if attempt["at"] - first >= timedelta(seconds=self.policy.give_up_after_seconds):
            dead = {"state": State.DEAD.value, "dead_at": attempt["at"], "dead_alerted": False}
            dead["first_failure_at"] = first
            return self._outcome(doc, attempt, dead, inc={"failures": 1}), 1
        retry_at = attempt["at"] + self.policy.delay(failures, self._rng)
        retry = {"next_attempt_at": retry_at, "first_failure_at": first}
        return self._outcome(doc, attempt, retry, inc={"failures": 1}), 0

    def _release(self, docs: Sequence[dict[str, Any]]) -> None:
        """Untried documents are due again at once: they did not fail."""
        self._bulk(
            [
                UpdateOne(
                    {"_id": doc["_id"], "lease_owner": self.owner}, {"$set": {"lease_until": None}}
                )
                for doc in docs
            ]
        )

    # -- what ops see -------------------------------------------------------------------

    def counts(self, flow_key: str, kinds: Sequence[str]) -> dict[str, int]:
        """Documents per state, plus those still pending after a failed attempt."""
        counts = {state.value: 0 for state in State} | {"retrying": 0}
        pipeline = [
            {"$match": {"flow": flow_key, "kind": {"$in": list(kinds)}}},
            {
                "$group": {
                    "_id": "$state",
                    "n": {"$sum": 1},
                    "retrying": {"$sum": {"$cond": [{"$gt": ["$failures", 0]}, 1, 0]}},
                }
            },
        ]
        for row in self.collection.aggregate(pipeline):
            counts[str(row["_id"])] = int(row["n"])
            if row["_id"] == State.PENDING.value:
                counts["retrying"] = int(row["retrying"])
        return counts

    def unalerted_dead(self, flow_key: str, kinds: Sequence[str]) -> list[dict[str, Any]]:
        return list(
            self.collection.find(
                {
                    "flow": flow_key,
                    "kind": {"$in": list(kinds)},
                    "state": State.DEAD.value,
                    "dead_alerted": {"$ne": True},
                },
                {"content": 0},
            )
        )

    def mark_dead_alerted(self, docs: Sequence[dict[str, Any]]) -> None:
        self._bulk(
            [UpdateOne({"_id": doc["_id"]}, {"$set": {"dead_alerted": True}}) for doc in docs]
        )
