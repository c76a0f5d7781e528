"""The outbox's documents (pure): their ids, their shape when queued, the record of an attempt,
and the update that records it under the retry policy."""

from __future__ import annotations

import random
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from bson import ObjectId
from pymongo import UpdateOne

from ordertrack_dagster.markers import OUTBOX_FIELD, Event
from ordertrack_dagster.security.redaction import redact

KEPT_ATTEMPTS = 20

#: What a drained order document must carry for the messages and the CRM payload.
ORDER_PROJECTION = {
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
    #: How long the receiver remembers an idempotency key (None: it never forgets, or it has
    #: none). No attempt is made later than this after the first claim, when the first call
    #: may have reached it: past it, a repeat would act twice instead of being dropped.
    key_horizon_seconds: float | None = None

    @property
    def give_up_after_hours(self) -> float:
        """The longest a delivery is retried: the give-up time, or the key horizon if shorter."""
        horizon = self.key_horizon_seconds
        seconds = (
            self.give_up_after_seconds
            if horizon is None
            else min(horizon, self.give_up_after_seconds)
        )
        return seconds / 3600

    def key_forgotten_by(self, doc: dict[str, Any], at: datetime) -> bool:
        """Whether an attempt at `at` would come after the receiver forgot the key."""
        first = doc.get("first_claimed_at")
        if self.key_horizon_seconds is None or first is None:
            return False
        return at - first >= timedelta(seconds=self.key_horizon_seconds)

    def key_horizon_text(self) -> str:
        """The dead letter's reason when the horizon ends the retries."""
        hours = (self.key_horizon_seconds or 0) / 3600
        return (
            f"not retried: the receiver forgets the idempotency key {hours:g} h after the "
            "first call, so a retry now could act twice; check whether the first call "
            "took effect, then re-queue or drop it"
        )

    def delay(self, failures: int, rng: random.Random) -> timedelta:
        """Exponential backoff with jitter, so a recovering service is not hit all at once."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** max(0, failures - 1))
        return timedelta(seconds=ceiling * rng.uniform(0.5, 1.0))


def event_id(order_oid: ObjectId, event: str) -> str:
    """One outbox document per order and event: a second drain finds it already there."""
    return f"{order_oid}:{event}"


def idempotency_key(order_oid: ObjectId, event: str) -> str:
    """Stable per order and event, so the receiver can drop a repeat of a timed-out call."""
    return f"ordertrack-{event}-{order_oid}"


def report_id(kind: Report, flow_key: str, run_id: str) -> str:
    return f"{kind}:{flow_key}:{run_id}"


def _queued(now: datetime) -> dict[str, Any]:
    """The delivery fields every new document starts with: due now, never tried."""
    return {
        "state": State.PENDING.value,
        "created_at": now,
        "next_attempt_at": now,
        "failures": 0,
        "attempts": [],
    }


def event_document(
    order: dict[str, Any],
    event: Event,
    marker: dict[str, Any],
    marketplaces: dict[Any, str],
    now: datetime,
) -> dict[str, Any]:
    """The outbox document for one drained marker. Any shape production stores (no
    `customer`, a `customer` that is text, an odd `marketplace`) still makes one."""
    oid = order["_id"]
    customer = order.get("customer")
    marketplace = order.get("marketplace")
    marketplace_name = marketplaces.get(marketplace) if isinstance(marketplace, Hashable) else None
    return {
        "_id": event_id(oid, event),
        "kind": event.value,
        "flow": marker.get("flow"),
        "order_oid": oid,
        "order_id": order.get("order_id"),
        "tracking_key": marker.get("tracking_key"),
        "status": marker.get("status"),
        "queued_at": marker.get("queued_at"),
        "order": {
            "phone": customer.get("phone") if isinstance(customer, dict) else None,
            "marketplace": marketplace_name,
            "total_amt": order.get("total_amt"),
        },
        "idempotency_key": idempotency_key(oid, event),
        **_queued(now),
    }


def report_document(
    kind: Report, flow_key: str, run_id: str, content: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The outbox document of one run's report."""
    return {
        "_id": report_id(kind, flow_key, run_id),
        "kind": kind.value,
        "flow": flow_key,
        "run_id": run_id,
        "content": content,
        **_queued(now),
    }


def attempt_record(
    started_at: datetime,
    started: float,
    outcome: str,
    http_status: int | None,
    error: str | None,
) -> dict[str, Any]:
    """One attempt as kept on the document (the last `KEPT_ATTEMPTS` of them)."""
    return {
        "at": started_at,
        "outcome": outcome,
        "http_status": http_status,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "error": redact(error) if error else None,
    }


def attempt_update(
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


def failure_update(
    doc: dict[str, Any], attempt: dict[str, Any], policy: RetryPolicy, rng: random.Random
) -> tuple[UpdateOne, int]:
    """Count the failure; back off, or give up (1 returned) once the document has been
    failing for the policy's time, so a long outage of the service is outlasted."""
    failures = int(doc.get("failures", 0)) + 1
    first = doc.get("first_failure_at") or attempt["at"]
    next_attempt_at = attempt["at"] + policy.delay(failures, rng)
    if policy.key_forgotten_by(doc, next_attempt_at):  # the retry would land past it
        attempt = attempt | {"error": f"{attempt['error']}; {policy.key_horizon_text()}"}
    elif attempt["at"] - first < timedelta(seconds=policy.give_up_after_seconds):
        retry = {"next_attempt_at": next_attempt_at, "first_failure_at": first}
        return attempt_update(doc, attempt, retry, inc={"failures": 1}), 0
    return dead_update(doc, attempt, {"first_failure_at": first}, failures=1), 1


def dead_update(
    doc: dict[str, Any], attempt: dict[str, Any], changes: dict[str, Any], failures: int
) -> UpdateOne:
    """Give up on the document: a dead letter for ops, announced once."""
    dead = {"state": State.DEAD.value, "dead_at": attempt["at"], "dead_alerted": False}
    return attempt_update(doc, attempt, dead | changes, inc={"failures": failures})
