"""The two invariants every fault test checks afterwards (RELIABILITY.md).

I: for every order, `order_status`, the last of `order_status_map`, `orderTracking.currentStatus`
   and the last History status agree; one orderTracking per order; no History entry twice
   in a row; no move to a refused predecessor.
E: each (order, event) has exactly one outbox record and was delivered once (the CRM: one
   accepted call per Idempotency-Key).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from bson import ObjectId
from pymongo.database import Database

from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.markers import OUTBOX_FIELD, Event
from ordertrack_dagster.statuses import Canonical, is_allowed


def invariant_i(db: Database, oids: Iterable[ObjectId], *, externally_moved: bool = False) -> None:
    """Invariant I over the given orders (`externally_moved`: another system changed a
    status, so orderTracking may follow it through a move ordertrack itself refuses)."""
    statuses = {doc["status_id"]: doc for doc in db["status"].find()}
    problems: list[str] = []
    for oid in oids:
        order = db["orders"].find_one({"_id": oid})
        status = statuses[order["order_status"]]
        status_map = order.get("order_status_map") or []
        if not status_map or status_map[-1] != status["_id"]:
            problems.append(f"{oid}: order_status_map does not end with {status['name']}")
        trackings = list(db["orderTracking"].find({"orderId": oid}))
        if status["name"] not in {s.value for s in Canonical}:
            if trackings:
                problems.append(f"{oid}: orderTracking for a non-canonical status")
            continue
        if len(trackings) != 1:
            problems.append(f"{oid}: {len(trackings)} orderTracking documents")
            continue
        [tracking] = trackings
        history = [entry["status"] for entry in tracking.get("History") or []]
        if tracking.get("currentStatus") != status["name"] or history[-1:] != [status["name"]]:
            problems.append(
                f"{oid}: order {status['name']!r}, orderTracking {tracking.get('currentStatus')!r}"
                f", History ends {history[-1:]}"
            )
        for before, after in zip(history, history[1:], strict=False):
            if before == after:
                problems.append(f"{oid}: History has {before!r} twice in a row")
            elif not externally_moved and not is_allowed(Canonical(before), Canonical(after)):
                problems.append(f"{oid}: History moves back {before!r} -> {after!r}")
    assert not problems, "invariant I broken:\n" + "\n".join(problems)


def invariant_e(db: Database, stack: EmbeddedStack, oids: Iterable[ObjectId]) -> None:
    """Invariant E over the given orders, once their effects were sent."""
    oids = list(oids)
    problems: list[str] = []
    for order in db["orders"].find({"_id": {"$in": oids}, OUTBOX_FIELD: {"$exists": True}}):
        problems.append(f"{order['_id']}: marker {order[OUTBOX_FIELD]} never drained")
    prefixes = {str(oid) for oid in oids}
    records = [
        doc
        for doc in db["ordertrack_outbox"].find({"kind": {"$in": [e.value for e in Event]}})
        if doc["_id"].split(":")[0] in prefixes
    ]
    per_event = Counter((doc["order_oid"], doc["kind"]) for doc in records)
    problems += [f"{key}: {n} outbox records" for key, n in per_event.items() if n != 1]
    problems += [f"{doc['_id']}: {doc['state']}" for doc in records if doc["state"] != "sent"]
    keys = {doc["idempotency_key"] for doc in records if doc["kind"] == Event.CRM_RTO.value}
    accepted = Counter(
        call["idempotency_key"] for call in stack.crm_webhooks() if call["status"] == "accepted"
    )
    problems += [f"CRM {key}: accepted {accepted[key]} times" for key in keys if accepted[key] != 1]
    for doc in records:
        if doc["kind"] == Event.CRM_RTO.value:
            continue
        posts = [m for m in stack.slack_messages() if doc["order_id"] in m["text"]]
        if len(posts) != 1:
            problems.append(f"{doc['_id']}: {len(posts)} Slack messages")
    assert not problems, "invariant E broken:\n" + "\n".join(problems)
