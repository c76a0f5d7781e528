"""The shared store keeps the documents a deployed database already holds: pauses and budget
windows written before the store owned them read the same, and what it writes has the same
`_id`s and fields (contract §4), so a running deployment keeps its pauses and counts."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from pymongo.database import Database

from ordertrack_dagster.flows import RateBudget
from ordertrack_dagster.resources.budget_window import bucket_width
from ordertrack_dagster.resources.state import STATE_COLLECTION, SharedState

LIMIT = RateBudget(requests=10, window_seconds=30)


def _now() -> datetime:
    """Now, to MongoDB's millisecond precision, so a stored time reads back equal."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def test_a_pause_stored_by_an_earlier_release_is_read_and_cleared_as_before(db: Database):
    set_at = _now()
    resume_at = set_at + timedelta(minutes=10)
    db[STATE_COLLECTION].insert_one(
        {"_id": "pause:delhivery_b2b", "resume_at": resume_at, "reason": "", "set_at": set_at}
    )
    state = SharedState(db)
    assert state.paused_until("delhivery_b2b") == resume_at
    assert list(state.pauses()) == ["delhivery_b2b"]
    assert state.clear_pause("delhivery_b2b") and state.paused_until("delhivery_b2b") is None


def test_a_stored_pause_keeps_its_id_and_fields(db: Database):
    resume_at = _now() + timedelta(minutes=5)
    SharedState(db).pause("shiprocket", resume_at, "429")
    stored = db[STATE_COLLECTION].find_one({"_id": "pause:shiprocket"})
    assert stored is not None and set(stored) == {"_id", "resume_at", "reason", "set_at"}
    assert stored["resume_at"] == resume_at and stored["reason"] == "429"


def test_a_budget_window_stored_by_an_earlier_release_is_counted_as_before(db: Database):
    bucket = int(time.time()) // bucket_width(LIMIT) * bucket_width(LIMIT)
    hint = _now() + timedelta(minutes=5)
    db[STATE_COLLECTION].insert_one(
        {"_id": "budget:delhivery_express", "buckets": {str(bucket): 7}, "paused_until": hint}
    )
    state = SharedState(db)
    assert state.requests_in_window("delhivery_express", LIMIT) == 7
    assert state.budget_frees_in("delhivery_express", LIMIT, wanted=3) == 0.0
    assert state.budget_frees_in("delhivery_express", LIMIT, wanted=4) > 0.0
    reserved = state.budget_window("delhivery_express").reserve({bucket: 2}, stale=[])
    assert reserved.buckets == {bucket: 9} and reserved.pause_hint == hint.timestamp() // 1
    stored = db[STATE_COLLECTION].find_one({"_id": "budget:delhivery_express"})
    assert stored == {
        "_id": "budget:delhivery_express",
        "buckets": {str(bucket): 9},
        "paused_until": hint,
    }
