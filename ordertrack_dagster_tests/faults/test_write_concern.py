"""What a replica set answers in a failover, given by the loopback proxy in SecantusDB's
stead (`proxy.py`, `reply_on`): a write applied but not confirmed by a majority
(`writeConcernError`), a write refused by a former primary (`NotWritablePrimary`), and a
write applied whose answer is lost. Matrix ids DB-WRITE-CONCERN and DB-STEPDOWN of
RELIABILITY.md: nothing counted that was not applied, nothing applied twice, and the run
fails or the update is sent again as the contract says."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterEventType

from ordertrack_dagster.effects.documents import RetryPolicy
from ordertrack_dagster.effects.outbox import OUTBOX_COLLECTION, Outbox
from ordertrack_dagster.resources.history_queue import CHUNKS, OBJECTS, HistoryQueue
from ordertrack_dagster.resources.mongo import (
    TIMEOUTS,
    UPDATE_ATTEMPTS,
    WriteNotAcknowledged,
    close_client,
    mongo_client,
)
from ordertrack_dagster.tracking.streaming import MAX_STREAM_EVERY, STREAM_EVERY_ENV
from ordertrack_dagster_tests.faults.conftest import PROXY_TIMEOUT_MS
from ordertrack_dagster_tests.faults.invariants import invariant_e, invariant_i
from ordertrack_dagster_tests.faults.proxy import (
    NOT_WRITABLE_PRIMARY,
    ORDERS_UPDATE,
    WRITE_CONCERN_ERROR,
    Reply,
    update_of,
)
from ordertrack_dagster_tests.helpers import materialize_flow, seed_orders

FLOW = "shiprocket"
MOVES = ["delivered", "rto_in_transit", "in_transit", "lost"]
KINDS = ["crm_rto"]


@pytest.fixture
def proxy(proxy, stack_env, monkeypatch):
    """The fault suite's proxy, with the client checking the server every 0.5 s: after a
    `NotWritablePrimary` pymongo forgets the server until its monitor sees it again, which
    a real replica set announces at once and the stand-in only at the next heartbeat."""
    uri = proxy.mongodb_uri(**dict.fromkeys(TIMEOUTS, PROXY_TIMEOUT_MS), heartbeatFrequencyMS=500)
    stack_env["MONGODB_URI"] = uri
    monkeypatch.setenv("MONGODB_URI", uri)
    yield proxy
    close_client(uri)


def _step_failure(result) -> str:
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    return f"{failure.step_key}: {failure.step_failure_data.error.to_string()}"


@pytest.fixture
def no_streamed_writes(monkeypatch):
    """No status written while fetching (a streamed write's failure is the write step's to
    redo): the fault meets the write step's own bulk."""
    monkeypatch.setenv(STREAM_EVERY_ENV, str(int(MAX_STREAM_EVERY.total_seconds())))


@pytest.mark.usefixtures("no_streamed_writes")
def test_an_unconfirmed_status_write_fails_the_run_and_counts_nothing(stack, db, proxy):
    """DB-WRITE-CONCERN on the orders bulk: MongoDB applied it, but the answer says a
    majority did not confirm it in time. The write step fails, saying so, and reports
    nothing as written (no materialization, so no side effect); the next run converges
    without doing anything twice (I and E)."""
    oids = [order.oid for order in seed_orders(db, stack.simulator, FLOW, MOVES)]
    proxy.reply_on(ORDERS_UPDATE, Reply(WRITE_CONCERN_ERROR, applied=True))
    failed = materialize_flow(FLOW, raise_on_error=False)
    assert not failed.success and proxy.replied == 1
    error = _step_failure(failed)
    assert error.startswith("order_status_writes:") and "not acknowledged" in error
    written = {e.asset_key.path[-1] for e in failed.get_asset_materialization_events()}
    assert "order_status_writes" not in written  # nothing counted
    moved = db["orders"].count_documents(
        {"_id": {"$in": oids}, "last_tracking_time": {"$exists": True}}
    )
    assert moved == len(MOVES)  # applied, though not confirmed
    assert db["orderTracking"].count_documents({"orderId": {"$in": oids}}) == 0
    proxy.release()
    assert materialize_flow(FLOW).success
    invariant_i(db, oids)
    invariant_e(db, stack, oids)


@pytest.mark.usefixtures("no_streamed_writes")
def test_a_step_down_during_the_status_write_is_retried_once(stack, db, proxy):
    """DB-STEPDOWN on the orders bulk: the server answers `NotWritablePrimary` (nothing
    applied). pymongo's retryable writes send the bulk again once the server is found
    again; the run succeeds, counts each order once, and nothing is applied twice (I, E)."""
    oids = [order.oid for order in seed_orders(db, stack.simulator, FLOW, MOVES)]
    proxy.reply_on(ORDERS_UPDATE, Reply(NOT_WRITABLE_PRIMARY))
    retried = materialize_flow(FLOW)
    assert retried.success and proxy.replied == 1
    [written] = retried.asset_materializations_for_node("order_status_writes")
    assert written.metadata["orders_modified"].value == len(MOVES)
    invariant_i(db, oids)
    invariant_e(db, stack, oids)


def _through_proxy(db):
    """The test's database through the proxy (`db` itself goes straight to SecantusDB)."""
    return mongo_client(os.environ["MONGODB_URI"])[db.name]


def _outbox(db) -> Outbox:
    return Outbox(_through_proxy(db), RetryPolicy(), owner="test", rng=random.Random(1))


def _seed_outbox(db, state: str, now: datetime, count: int = 3) -> None:
    db[OUTBOX_COLLECTION].insert_many(
        {
            "_id": f"{FLOW}:{n}:crm_rto",
            "flow": FLOW,
            "kind": KINDS[0],
            "state": state,
            "sent_at": now - timedelta(days=100),
            "failures": 9,
            "order": {"phone": "+91 90000 0000{n}"},
        }
        for n in range(count)
    )


def _purge(outbox: Outbox, now: datetime) -> int:
    return outbox.purge_delivered(FLOW, now - timedelta(days=90), now)


def _requeue(outbox: Outbox, now: datetime) -> int:
    return outbox.requeue_dead(FLOW, KINDS, now)


PATHS = {  # what each update of many documents starts from, and how its result shows
    "purge": ("sent", _purge, {"purged_at": {"$exists": True}, "order": {"$exists": False}}),
    "requeue": ("dead", _requeue, {"state": "pending", "failures": 0}),
}
FAULTS = {  # each test arms a fresh one (a reply counts how often it was given)
    "write-concern-error": lambda: Reply(WRITE_CONCERN_ERROR, applied=True),
    "not-writable-primary": lambda: Reply(NOT_WRITABLE_PRIMARY),
}


@pytest.mark.parametrize("fault", ["write-concern-error", "not-writable-primary"])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_an_outbox_update_of_many_is_sent_again_and_counted_once(db, proxy, path, fault):
    """Purge and dead-letter requeue after an unconfirmed answer (applied) or a step-down
    (not applied): the update is sent again, each document is changed once, and the count
    is what was changed, no more, no less."""
    now = datetime.now(UTC).replace(microsecond=0)
    state, update, done = PATHS[path]
    _seed_outbox(db, state, now)
    proxy.reply_on(update_of(OUTBOX_COLLECTION), FAULTS[fault]())
    assert update(_outbox(db), now) == 3
    assert proxy.replied == 1
    assert db[OUTBOX_COLLECTION].count_documents(done) == 3


@pytest.mark.parametrize("path", sorted(PATHS))
def test_an_outbox_update_whose_answers_keep_being_lost_fails_clearly(db, proxy, path):
    """Every answer lost after MongoDB applied the update: after `UPDATE_ATTEMPTS` sendings
    the call fails with `WriteNotAcknowledged` (never a count), and the documents were
    changed once."""
    now = datetime.now(UTC).replace(microsecond=0)
    state, update, done = PATHS[path]
    _seed_outbox(db, state, now)
    proxy.cut_on(update_of(OUTBOX_COLLECTION))
    with pytest.raises(WriteNotAcknowledged, match=f"after {UPDATE_ATTEMPTS} attempts"):
        update(_outbox(db), now)
    assert proxy.cuts == UPDATE_ATTEMPTS
    assert db[OUTBOX_COLLECTION].count_documents(done) == 3


def test_history_expiry_is_set_on_every_chunk_after_an_unconfirmed_answer(db, proxy):
    """The expiry of a published history object's chunks: after a `writeConcernError` the
    update is sent again; the object is published once and every chunk expires with it."""
    now = datetime.now(UTC).replace(microsecond=0)
    queue = HistoryQueue(_through_proxy(db))
    queue.store("status_updates", FLOW, "run-1", "history/key.parquet", b"x" * 10, 1, now)
    uploaded: list[str] = []
    proxy.reply_on(update_of(CHUNKS), Reply(WRITE_CONCERN_ERROR, applied=True))
    published = queue.publish(
        "status_updates", FLOW, lambda key, body, header: uploaded.append(key), now
    )
    assert (published.published, published.pending, proxy.replied) == (1, 0, 1)
    assert uploaded == ["history/key.parquet"]
    assert db[OBJECTS].count_documents({"state": "published"}) == 1
    assert db[CHUNKS].count_documents({"expire_at": {"$exists": False}}) == 0
