"""Network faults between the product and SecantusDB, through the loopback proxy
(`proxy.py`): a connection cut while the orders bulk is written, and a stall longer than the
client's time-outs. Matrix ids are those of RELIABILITY.md."""

from __future__ import annotations

import time

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from ordertrack_dagster_tests.faults.conftest import PROXY_TIMEOUT_MS
from ordertrack_dagster_tests.faults.invariants import invariant_e, invariant_i
from ordertrack_dagster_tests.faults.proxy import ORDERS_UPDATE
from ordertrack_dagster_tests.helpers import materialize_flow, seed_orders
from ordertrack_dagster_tests.test_cli_flow import dagster_materialize

FLOW = "shiprocket"
MOVES = ["delivered", "rto_in_transit", "in_transit", "lost"]


@pytest.mark.parametrize(
    "keep",
    [None, 40],
    ids=["answer-lost", "command-cut-short"],
)
def test_db_cut_mid_bulk_then_the_next_run_converges(stack, db, proxy, keep):
    """DB-CUT-MID-BULK: every connection that sends the orders bulk is cut (after the whole
    command, so MongoDB applies it and only its answer is lost; or 40 bytes into it); the
    run fails, and the next one converges: I and E, nothing twice."""
    oids = [order.oid for order in seed_orders(db, stack.simulator, FLOW, MOVES)]
    proxy.cut_on(ORDERS_UPDATE, keep=keep)
    failed = materialize_flow(FLOW, raise_on_error=False)
    assert not failed.success and proxy.cuts >= 1
    moved = db["orders"].count_documents(
        {"_id": {"$in": oids}, "last_tracking_time": {"$exists": True}}
    )
    assert moved == (len(MOVES) if keep is None else 0)
    assert db["orderTracking"].count_documents({"orderId": {"$in": oids}}) == 0
    proxy.release()
    assert materialize_flow(FLOW).success
    invariant_i(db, oids)
    invariant_e(db, stack, oids)


def test_db_slow_fails_the_run_within_the_client_timeouts(
    stack, db, stack_env, proxy, dagster_home
):
    """DB-SLOW: MongoDB traffic stalls from the orders bulk on, longer than the client's
    time-outs: the CLI run fails on its own within a bound set by them (no run left STARTED,
    no process left); after the stall the next run converges (I and E)."""
    seeded = seed_orders(db, stack.simulator, FLOW, MOVES)
    proxy.stall_on(ORDERS_UPDATE)
    run = dagster_materialize(FLOW, stack_env, dagster_home)
    ended = time.monotonic()
    assert proxy.stalled_at is not None, run.stderr[-2000:]
    assert run.returncode not in (0, -9) and "timed out" in run.stderr, run.stderr[-2000:]
    assert ended - proxy.stalled_at < STALL_BOUND_SECONDS
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        [record] = instance.get_run_records(RunsFilter())
        assert record.dagster_run.status == DagsterRunStatus.FAILURE
    proxy.release()
    assert materialize_flow(FLOW).success
    oids = [order.oid for order in seeded]
    invariant_i(db, oids)
    invariant_e(db, stack, oids)


#: Each MongoDB call the failing run still makes waits at most one time-out (an answer, or
#: finding the server again); a run that fails at the write makes a handful, then Dagster
#: writes its failure and the process exits.
STALL_BOUND_SECONDS = 8 * PROXY_TIMEOUT_MS / 1000 + 5
