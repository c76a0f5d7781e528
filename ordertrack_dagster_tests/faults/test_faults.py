"""The standing fault suite (`make faults`): each test injects one fault on the real local
servers, then checks invariant I (and E once effects ran). Matrix ids in the test names are
those of RELIABILITY.md."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from bson import ObjectId
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    build_input_context,
    build_output_context,
)

from ordertrack_dagster.couriers.engine import MAX_ATTEMPTS
from ordertrack_dagster.devstack.seed import seed_reference_data
from ordertrack_dagster.devstack.stack import AWS_KEY, AWS_REGION, HOST
from ordertrack_dagster.effects.crm import CrmResource
from ordertrack_dagster.effects.delivery import DeliveryError, deliver
from ordertrack_dagster.effects.documents import Report, RetryPolicy
from ordertrack_dagster.effects.outbox import Outbox
from ordertrack_dagster.flows import FLOWS, get_flow, max_runtime
from ordertrack_dagster.killpoints import KILL_AT_ENV
from ordertrack_dagster.orchestration.guards import hold_reason
from ordertrack_dagster.orchestration.sensors import reap_dead_runs
from ordertrack_dagster.records import FetchState
from ordertrack_dagster.resources.history_queue import HistoryQueue, reset_backoff
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.resources.s3 import OrdertrackS3Resource, ParquetHistoryIOManager
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.statuses import Canonical
from ordertrack_dagster.tracking.streaming import STREAM_EVERY_ENV
from ordertrack_dagster_tests.effects.support import (
    Runner,
    metadata,
    moved_by_write_path,
    webhooks_for,
)
from ordertrack_dagster_tests.faults.invariants import invariant_e, invariant_i
from ordertrack_dagster_tests.helpers import (
    materialize_flow,
    orders_by_id,
    seed_orders,
    stored_frame,
)
from ordertrack_dagster_tests.hostile import Raw, Seen, hostile_server
from ordertrack_dagster_tests.test_cli_flow import dagster_materialize

FLOW = "shiprocket"
MOVES = ["delivered", "rto_in_transit", "in_transit", "lost"]


def mongo(env):
    return MongoResource(uri=env["MONGODB_URI"], database=env["MONGODB_DB"])


def _oids(seeded):
    return [order.oid for order in seeded]


def test_s3_down_whole_run(stack, db, stack_env):
    """S3-DOWN-WHOLE-RUN: the statuses land; the history waits in MongoDB, then reaches S3."""
    seeded = seed_orders(db, stack.simulator, FLOW, MOVES)
    stack.stop_service("s3")
    with DagsterInstance.ephemeral() as instance:
        first = materialize_flow(FLOW, instance=instance)
        invariant_i(db, _oids(seeded))
        queue = HistoryQueue(db)
        assert queue.objects.count_documents({"run_id": first.run_id, "state": "pending"}) == 4
        stack.start_service("s3")
        reset_backoff()
        materialize_flow(FLOW, instance=instance)
    frame = stored_frame(stack, "status_updates", FLOW, first.run_id)
    assert sorted(frame["order_id"]) == sorted(order.order_id for order in seeded)
    assert queue.objects.count_documents({"state": "pending"}) == 0
    invariant_i(db, _oids(seeded))
    invariant_e(db, stack, _oids(seeded))


def test_db_kill_between_bulks(stack, db, stack_env, dagster_home):
    """DB-KILL-BETWEEN-BULKS: SIGKILL after the orders bulk; the next run repairs History."""
    seeded = seed_orders(db, stack.simulator, FLOW, MOVES)
    killed = dagster_materialize(FLOW, {**stack_env, KILL_AT_ENV: "between_bulks"}, dagster_home)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert db["orderTracking"].count_documents({"orderId": {"$in": _oids(seeded)}}) == 0
    assert materialize_flow(FLOW).success
    invariant_i(db, _oids(seeded))
    invariant_e(db, stack, _oids(seeded))


def test_a_run_killed_after_a_streamed_write_keeps_what_it_wrote(
    stack, db, stack_env, dagster_home, monkeypatch
):
    """KILL-AFTER-STREAMED-WRITE: SIGKILL right after the fetch wrote its first answers'
    statuses; those orders stay written, and the next run (in process: only the killed one
    needs a process of its own) writes the others, none twice."""
    flow = "delhivery_b2b"
    seeded = seed_orders(db, stack.simulator, flow, ["delivered"] * 20)
    streamed = {"B2B_TRACKING_WORKERS": "1", STREAM_EVERY_ENV: "0"}
    env = {**stack_env, **streamed, KILL_AT_ENV: "after_streamed_write"}
    killed = dagster_materialize(flow, env, dagster_home)
    assert killed.returncode == -9, killed.stderr[-2000:]
    delivered = seed_reference_data(db).statuses[Canonical.DELIVERED]["status_id"]
    written = db["orders"].distinct("_id", {"order_status": delivered})
    assert 0 < len(written) < 20
    invariant_i(db, written)  # orderTracking followed, in the dead run itself

    for name, value in streamed.items():
        monkeypatch.setenv(name, value)
    assert materialize_flow(flow).success
    assert db["orders"].count_documents({"order_status": delivered}) == 20
    invariant_i(db, _oids(seeded))


def test_db_down_before_the_run_then_restarted_with_its_data(stack, db, stack_env):
    """DB-DOWN-BEFORE: the run fails before asking the courier; after a restart (data kept on
    disk) the next run writes everything."""
    seeded = seed_orders(db, stack.simulator, FLOW, MOVES)
    before = stack.simulator.stats()["couriers"][FLOW]["requests"]
    stack.stop_service("mongodb")
    failed = materialize_flow(FLOW, raise_on_error=False)
    assert not failed.success
    assert stack.simulator.stats()["couriers"][FLOW]["requests"] == before
    stack.start_service("mongodb")
    assert materialize_flow(FLOW).success
    invariant_i(db, _oids(seeded))
    invariant_e(db, stack, _oids(seeded))


def test_order_tracking_follows_a_rebooked_order(stack, db, stack_env):
    """TRACKING-FOLLOWS-ORDER: cancelled, then rebooked by another system; the next poll
    brings orderTracking to the order's status."""
    [order] = seed_orders(db, stack.simulator, FLOW, ["in_transit"], status="in transit")
    db["orderTracking"].insert_one(
        {
            "orderId": order.oid,
            "currentStatus": "booking_cancelled",
            "History": [{"status": "booking_cancelled", "timeStamp": datetime.now(UTC)}],
        }
    )
    assert materialize_flow(FLOW).success
    tracking = db["orderTracking"].find_one({"orderId": order.oid})
    assert tracking["currentStatus"] == "in transit"
    assert [e["status"] for e in tracking["History"]] == ["booking_cancelled", "in transit"]
    invariant_i(db, [order.oid], externally_moved=True)


def test_db_rejected_ops_fail_a_check_and_stay_due(stack, db, stack_env):
    """DB-REJECTED-OPS: a validator refuses one order's update: the check fails, the alert
    names it, the figures do not count it, and the order stays due."""
    rejected, accepted = seed_orders(db, stack.simulator, FLOW, ["delivered", "delivered"])
    delivered = seed_reference_data(db).statuses[Canonical.DELIVERED]["status_id"]
    refuse = {
        "$and": [{"$eq": ["$order_id", rejected.order_id]}, {"$eq": ["$order_status", delivered]}]
    }
    db.command("collMod", "orders", validator={"$expr": {"$not": [refuse]}})
    result = materialize_flow(FLOW)
    [check] = [
        c for c in result.get_asset_check_evaluations() if c.check_name == "no_rejected_writes"
    ]
    assert not check.passed
    written = metadata(result, "order_status_writes")
    assert (written["updated"], written["rejected_updates"]) == (1, 1)
    frame = stored_frame(stack, "order_status_writes", FLOW, result.run_id)
    row = frame.set_index("order_id").loc[rejected.order_id]
    assert row["action"] == "rejected" and "rejected" in row["alert"]
    assert "last_tracking_time" not in orders_by_id(db, [rejected])[rejected.order_id]
    invariant_i(db, [accepted.oid])


def test_zombie_run_is_marked_failed_and_the_flow_resumes(stack, db, stack_env, dagster_home):
    """ZOMBIE-RUN: a CLI run SIGKILLed mid-run stays STARTED; past its max runtime without an
    event it is marked failed (the failure alert follows) and the flow's tick runs again."""
    seed_orders(db, stack.simulator, FLOW, ["in_transit"])
    killed = dagster_materialize(FLOW, {**stack_env, KILL_AT_ENV: "after_fetch"}, dagster_home)
    assert killed.returncode == -9
    flow = get_flow(FLOW)
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        state = SharedState(db)
        assert "in flight" in (hold_reason(instance, flow, state, datetime.now(UTC)) or "")
        assert reap_dead_runs(instance, datetime.now(UTC)) == []  # still within its runtime
        later = datetime.now(UTC) + max_runtime(flow) + timedelta(minutes=10)  # and monitoring
        [reaped] = reap_dead_runs(instance, later)
        run = instance.get_run_by_id(reaped.run.run_id)
        assert run.status == DagsterRunStatus.FAILURE
        assert hold_reason(instance, flow, state, datetime.now(UTC)) is None


def test_crm_slow_success_is_time_boxed(stack, db, stack_env):
    """CRM-SLOW-SUCCESS: a CRM answering in 1 s holds a run for its time box only; the rest
    is sent by later runs, each event once."""
    reference = seed_reference_data(db)
    in_transit = reference.statuses[Canonical.IN_TRANSIT]["status_id"]
    orders = [
        {
            "_id": ObjectId(),
            "order_id": f"OT-SLOW-{n}-{time.time_ns()}",
            "order_status": in_transit,
            "awb_number": f"AWB{n}",
            "marketplace": reference.marketplaces["shopify"],
            "customer": {"phone": "9000000001", "name": "A"},
            "total_amt": 100.0,
        }
        for n in range(8)
    ]
    moved = moved_by_write_path(db, "delhivery_b2c", orders, [Canonical.RTO] * 8, datetime.now(UTC))
    stack.inject_fault("crm", "timeout", count=8, seconds=1.0)
    with DagsterInstance.ephemeral() as instance:
        runner = Runner(instance, effects={"retry_base_seconds": 0.0, "send_budget_seconds": 2.0})
        first = runner.run("effects_outbox", "crm_rto_webhooks")
        sent = metadata(first, "crm_rto_webhooks")  # the send budget stopped the sending:
        assert sent["not_attempted"] > 0 and sent["sent"] < 8
        while metadata(runner.run("crm_rto_webhooks"), "crm_rto_webhooks")["queue_pending"]:
            pass
    calls = webhooks_for(stack, [order["order_id"] for order in moved])
    assert sorted(
        {call["idempotency_key"] for call in calls if call["status"] == "accepted"}
    ) == sorted({f"ordertrack-crm_rto-{order['_id']}" for order in moved})
    invariant_e(db, stack, [order["_id"] for order in moved])


def _trickling_server(stop: threading.Event) -> int:
    """A loopback HTTP server that sends its answer one byte every half second."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(0.2)

    def serve() -> None:
        with listener:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.recv(65536)
                    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + b"x" * 40
                    for byte in answer:
                        if stop.is_set():
                            break
                        try:
                            conn.sendall(bytes([byte]))
                        except OSError:
                            break
                        time.sleep(0.5)

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1])


def test_crm_trickle_ends_within_the_total_deadline():
    """CRM-TRICKLE: one byte every 0.5 s never trips a per-read timeout; the call still ends
    within its total deadline."""
    stop = threading.Event()
    port = _trickling_server(stop)
    crm = CrmResource(
        webhook_url=f"http://{HOST}:{port}/hook", auth_url=f"http://{HOST}:{port}/token",
        client_id="a", client_secret="b", timeout_seconds=2.0,
    )  # fmt: skip
    try:
        # no single read waits 2 s (a byte comes every 0.5 s): only the total deadline can
        # end the call, and it says so
        with crm.open() as client, pytest.raises(DeliveryError, match="timed out"):
            client.send_rto({"order_id": "1"}, "key-1")
    finally:
        stop.set()


def test_crm_long_outage_is_outlasted(stack, db):
    """CRM-LONG-OUTAGE: a CRM down for two days: still pending; dead only after 72 h."""
    moment = datetime(2024, 9, 22, 6, 0, tzinfo=UTC)
    box = Outbox(db, RetryPolicy(), owner="run-1", clock=lambda: moment)
    box.enqueue_report(Report.QUERY_LOG, FLOW, "run-1", {"n": 1}, moment)
    stack.stop_service("crm")
    crm = CrmResource(webhook_url=stack.url("crm") + "/webhooks/order-cancel")

    def send(doc):
        with crm.open() as client:
            return client.send_rto({"order_id": "1"}, "key")

    attempts = 0
    while moment < datetime(2024, 9, 24, 6, 0, tzinfo=UTC):
        docs = box.claim(FLOW, ["query_log"], moment)
        if docs:
            deliver(box, docs, send)
            attempts += 1
        moment += timedelta(minutes=30)
    doc = box.collection.find_one()
    assert attempts > 8 and doc["state"] == "pending"
    moment += timedelta(hours=25)
    deliver(box, box.claim(FLOW, ["query_log"], moment), send)
    assert box.collection.find_one()["state"] == "dead"


def test_two_runs_of_one_flow_each_read_their_own_output(stack, db, stack_env):
    """TWO-RUNS-SAME-FLOW: run B stores its output after run A; A's next step reads A's."""
    s3 = OrdertrackS3Resource(
        endpoint_url=stack.url("s3"), region_name=AWS_REGION,
        aws_access_key_id=AWS_KEY, aws_secret_access_key=AWS_KEY,
    )  # fmt: skip
    manager = ParquetHistoryIOManager(s3=s3, mongo=mongo(stack_env), bucket=stack.bucket)
    frames = {}
    for run_id, n in (("run-a", 1), ("run-b", 2)):
        frames[run_id] = pd.DataFrame({"order_id": [f"{run_id}-{i}" for i in range(n)]})
        context = build_output_context(
            asset_key="pending_orders", partition_key=FLOW, run_id=run_id
        )
        manager.handle_output(context, frames[run_id])
    upstream = build_output_context(asset_key="pending_orders", partition_key=FLOW, run_id="run-a")
    loaded = manager.load_input(
        build_input_context(
            asset_key="pending_orders", partition_key=FLOW, upstream_output=upstream
        )
    )
    assert list(loaded["order_id"]) == ["run-a-0"]


def test_duplicate_order_tracking_refuses_the_run(stack, db, stack_env):
    """DB-UNIQUE-INDEX: with duplicate orderTracking documents the unique index cannot be
    built: the run refuses to write, with a clear error, before asking the courier."""
    [order] = seed_orders(db, stack.simulator, FLOW, ["delivered"])
    db["orderTracking"].insert_many([{"orderId": order.oid}, {"orderId": order.oid}])
    before = stack.simulator.stats()["couriers"][FLOW]["requests"]
    result = materialize_flow(FLOW, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert (
        "unique index orderTracking.orderId"
        in failure.step_failure_data.user_failure_data.description
    )
    assert "last_tracking_time" not in orders_by_id(db, [order])[order.order_id]
    assert stack.simulator.stats()["couriers"][FLOW]["requests"] == before


def test_courier_trickle_fails_its_batch_within_the_deadlines_of_a_whole_flow(
    stack, db, stack_env, monkeypatch
):
    """CUR-TRICKLE (full flow): the Delhivery B2C courier answers a byte every 0.2 s, the
    flow's time-out is 1 s: each attempt ends at that deadline (its error says so; the whole
    answer would take 12 s), the batch fails after its attempts, the run succeeds, and the
    orders are left as they were (I), still due."""
    seeded = seed_orders(db, stack.simulator, "delhivery_b2c", ["delivered", "in_transit"])
    flow = replace(get_flow("delhivery_b2c"), timeout_seconds=1.0)
    monkeypatch.setitem(FLOWS, flow.key, flow)

    def trickle(seen: Seen) -> Raw:  # each attempt gets its own trickle
        body = (b" " for _ in range(60))
        return Raw(200, [("Content-Type", "application/json")], chunks=body, pause=0.2)

    with hostile_server(trickle) as courier:
        monkeypatch.setenv("DELHIVERY_URL", f"{courier.url}/api/v1/packages/json/")
        result = materialize_flow(flow.key, raise_on_error=False)
    assert result.success
    # each attempt ended at its 1 s deadline (the error says so), not after the 12 s answer
    raw = stored_frame(stack, "raw_courier_responses", flow.key, result.run_id)
    assert set(raw["state"]) == {FetchState.FAILED.value}
    assert set(raw["attempts"]) == {MAX_ATTEMPTS}
    assert set(raw["error"]) == {"no complete answer within 1 s"}
    assert all("last_tracking_time" not in doc for doc in orders_by_id(db, seeded).values())
    invariant_i(db, _oids(seeded))
