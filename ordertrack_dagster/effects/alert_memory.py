"""Which alerts were announced before, so that Slack hears of each condition once.

A condition of one order (not found, unmapped status, reference mismatch, refused move,
rejected write, shared tracking key, odd tracking key) repeats on every run until the courier's
answer changes: the same order, the same kind, the same message (for a rejected write, the
same error code). Each is remembered in `ordertrack_alerted` under a fingerprint,
with the run that met it first. "New in this run" is then a question MongoDB answers the same
way however often it is asked (the alert log and the email both ask; a re-run asks again).
Run-wide conditions (rate limits, API and login failures) are never remembered: they are
announced whenever they happen. Remembered conditions are forgotten after a month
(a TTL index made with the others in `resources/mongo.py`), so one still there a month
later is announced again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

from ordertrack_dagster.effects.reports import ALERT_KINDS
from ordertrack_dagster.resources.mongo import ALERTED, BulkLog, bulk_update

#: Alert kinds that belong to one order and repeat unchanged while its answer does not change:
#: all but the run-wide ones.
REMEMBERED_KINDS = frozenset(ALERT_KINDS) - {
    "rate_limited",
    "api_failure",
    "token_failure",
    "other",
}
#: Kinds whose message ends in text that differs every run (MongoDB's error names the time
#: and the document); the head before the first ": " names the condition (the error code).
HEAD_ONLY_KINDS = frozenset({"rejected_write"})


def fingerprint(line: Mapping[str, Any]) -> str:
    """The condition an alert line announces: order, kind and message (the courier's words)."""
    message = str(line["message"])
    if line["kind"] in HEAD_ONLY_KINDS:
        message = message.partition(": ")[0]
    parts = (line["flow"], line["order_id"], line["tracking_key"], line["kind"], message)
    return hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).hexdigest()


def new_alerts(
    db: Database, lines: Sequence[Mapping[str, Any]], run_id: str, now: datetime
) -> list[Mapping[str, Any]]:
    """The lines this run announces for the first time: remembered kinds met first by this
    run, and every run-wide line. Two round trips whatever the number of lines."""
    remembered = {fingerprint(line) for line in lines if line["kind"] in REMEMBERED_KINDS}
    if not remembered:
        return list(lines)
    collection = db[ALERTED]
    ops = [
        UpdateOne(
            {"_id": key},
            {"$setOnInsert": {"first_run": run_id, "first_seen": now}},
            upsert=True,
        )
        for key in remembered
    ]
    bulk_update(collection, ops, BulkLog())
    first_here = {doc["_id"] for doc in collection.find({"first_run": run_id}, {"_id": 1})}
    return [
        line
        for line in lines
        if line["kind"] not in REMEMBERED_KINDS or fingerprint(line) in first_here
    ]
