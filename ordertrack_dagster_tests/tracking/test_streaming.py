"""Statuses written while the fetch goes on (tracking/streaming.py), against the local
servers: the fetch writes what it kept, the write step writes only the rest, and the run's
table and figures tell the whole run."""

import logging

import pytest

from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.resources.mongo import STREAMED
from ordertrack_dagster.tracking.steps import (
    ask_courier,
    map_answers,
    select_pending,
    write_statuses,
)
from ordertrack_dagster.tracking.streaming import STREAM_EVERY_ENV
from ordertrack_dagster_tests.faults.invariants import invariant_i
from ordertrack_dagster_tests.helpers import courier_resource, seed_orders

LOG = logging.getLogger(__name__)
FLOW = get_flow("delhivery_b2b")  # one key per request


@pytest.fixture
def streaming_each_request(monkeypatch):
    """One worker, answers written after every request."""
    monkeypatch.setenv(STREAM_EVERY_ENV, "0")
    monkeypatch.setenv("B2B_TRACKING_WORKERS", "1")


def test_a_long_fetch_writes_as_it_goes_and_the_write_step_writes_the_rest(
    stack, stack_env, db, streaming_each_request
):
    moves = ["delivered", "in_transit", "rto_in_transit", "lost", None, "in_transit"]
    seeded = seed_orders(db, stack.simulator, FLOW.key, moves)
    pending = select_pending(db, FLOW, LOG).frame
    raw = ask_courier(
        db, pending, FLOW, courier_resource(FLOW.key, stack_env), force=False, run_id="r", log=LOG
    )
    streamed = raw.metadata["orders_written_while_fetching"]
    assert 3 <= streamed <= 5  # the answers of every request but the last few
    polled = db["orders"].count_documents({"last_tracking_time": {"$exists": True}})
    assert polled == streamed

    written = write_statuses(db, map_answers(pending, raw.frame, FLOW).frame, FLOW, ["r"], LOG)
    actions = dict(zip(written.frame["tracking_key"], written.frame["action"], strict=True))
    assert sorted(actions.values()) == ["status_changed"] * 5 + ["untouched"]
    assert written.metadata["updated"] == 5
    # the streamed writes' counters included: 5 moves, and the unanswered order's asked time
    assert written.metadata["orders_modified"] == 6
    assert written.metadata["rejected_updates"] == 0
    assert db["orders"].count_documents({"last_tracking_time": {"$exists": True}}) == 5
    assert db[STREAMED].count_documents({}) == 0  # the written run let go of its decisions
    invariant_i(db, [order.oid for order in seeded])
