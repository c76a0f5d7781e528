"""TWO-RUNS-SAME-FLOW for real: a `dagster` CLI run of a flow started while another run of the
same flow is in flight, both against one Dagster instance and one database, as ops re-run a
partition by hand beside a scheduled run (the CLI runs outside the run queue, so nothing holds
it back). Afterwards invariants I and E hold, the courier saw no more requests than the
flow's budget, and each run has its own Parquet history and alert log."""

from __future__ import annotations

import gzip
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus

from ordertrack_dagster.devstack.demo import dagster_env, launch_flow_command
from ordertrack_dagster.devstack.simulator import SimulatorAdmin
from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster_tests.faults.invariants import invariant_e, invariant_i
from ordertrack_dagster_tests.helpers import seed_orders, simulator_counts, stored_frame
from ordertrack_dagster_tests.test_cli_flow import PROJECT_ROOT

FLOW = "delhivery_b2b"
BUDGET = 16  # requests fewer than the two runs' 2 x 11 would send, in a window that frees only
#: after the runs' time box, so the rest is deferred rather than waited for
BUDGET_WINDOW_SECONDS = 86_400
#: Courier latency while the first run must stay in its fetch: long enough for the second run
#: to start beside it, below the flow's 20 s request timeout.
SLOW_MS = (8_000.0, 12_000.0)
WAIT_SECONDS = 240


def _cli_run(env: dict, home: Path) -> subprocess.Popen:
    """A `dg launch` of the flow, as ops re-run a partition by hand."""
    return subprocess.Popen(
        launch_flow_command(FLOW),
        env=dagster_env(env, home),
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def _slow_courier(simulator: SimulatorAdmin) -> Iterator[Callable[[], None]]:
    """The simulator answers slowly until the returned callable (or the end) restores it."""
    before = simulator.settings()
    restore = {name: before[name] for name in ("latency_mean_ms", "latency_p99_ms")}
    simulator.update_settings(latency_mean_ms=SLOW_MS[0], latency_p99_ms=SLOW_MS[1])
    try:
        yield lambda: simulator.update_settings(**restore)
    finally:
        simulator.update_settings(**restore)


def _wait_for(what: str, condition: Callable[[], object]) -> object:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"gave up waiting for {what}")


def _runs(instance: DagsterInstance) -> list[DagsterRun]:
    return sorted(
        instance.get_runs(),
        key=lambda run: instance.get_run_record_by_id(run.run_id).create_timestamp,
    )


def _materialized(instance: DagsterInstance, run_id: str, asset: str) -> bool:
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records
    return any(r.event_log_entry.dagster_event.asset_key.to_user_string() == asset for r in records)


def _alert_log(stack: EmbeddedStack, run_id: str) -> list[dict]:
    client = stack.s3_client()
    prefix = f"ordertrack/alert_logs/flow={FLOW}/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix)
    [key] = [
        item["Key"]
        for page in pages
        for item in page.get("Contents", [])
        if item["Key"].endswith(f"/{run_id}.jsonl")
    ]
    body = client.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    return [json.loads(line) for line in body.decode().splitlines()]


def test_a_cli_run_beside_an_in_flight_run_of_the_same_flow(stack, db, stack_env, dagster_home):
    steps = ["rto_in_transit", "lost", "delivered", "in_transit", "out_for_delivery"] * 2
    seeded = seed_orders(db, stack.simulator, FLOW, [None, *steps])  # None: unknown LR, asked first
    env = {
        **stack_env,
        f"ORDERTRACK_RATE_BUDGET_{FLOW.upper()}": f"{BUDGET}/{BUDGET_WINDOW_SECONDS}",
    }
    counts = simulator_counts(stack.simulator, FLOW)
    processes: list[subprocess.Popen] = []
    try:
        with (
            _slow_courier(stack.simulator) as restore_latency,
            DagsterInstance.from_config(str(dagster_home)) as instance,
        ):
            processes.append(_cli_run(env, dagster_home))
            [first] = _wait_for("the first run", lambda: _runs(instance))
            processes.append(_cli_run(env, dagster_home))
            second = _wait_for("the second run", lambda: _runs(instance)[1:])[0]
            _wait_for(
                "the second run's selection",
                lambda: _materialized(instance, second.run_id, "pending_orders"),
            )
            # both for real in flight: the first still asking the courier
            assert instance.get_run_by_id(first.run_id).status == DagsterRunStatus.STARTED
            assert not _materialized(instance, first.run_id, "raw_courier_responses")
            restore_latency()
            outcomes = [process.wait(timeout=WAIT_SECONDS) for process in processes]
            assert outcomes == [0, 0], [p.stderr.read()[-2000:] for p in processes]
            statuses = {instance.get_run_by_id(r.run_id).status for r in (first, second)}
            assert statuses == {DagsterRunStatus.SUCCESS}
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    oids = [order.oid for order in seeded]
    invariant_i(db, oids)
    invariant_e(db, stack, oids)

    after = simulator_counts(stack.simulator, FLOW)
    asked = (after["requests"] - after["logins"]) - (counts["requests"] - counts["logins"])
    assert 0 < asked <= BUDGET
    assert after["status_codes"].get("403", 0) == counts["status_codes"].get("403", 0)

    unknown = seeded[0]
    announced = []
    for run in (first, second):
        raw = stored_frame(stack, "raw_courier_responses", FLOW, run.run_id)
        assert set(raw["run_id"]) == {run.run_id}  # each run's history is its own
        lines = _alert_log(stack, run.run_id)
        assert {line["run_id"] for line in lines} == {run.run_id}
        assert any(line["order_id"] == unknown.order_id for line in lines)
        announced += [
            message
            for message in stack.slack_messages("C0TRACKALERTS")
            if run.run_id in message["text"] and "missing awb" in message["text"]
        ]
    assert len(announced) == 1  # both logs list the unknown LR; Slack hears of it once
