"""End to end: the Dagster daemon launches a scheduled run against the embedded stack."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from ordertrack_dagster.orchestration.guards import FLOW_TAG
from ordertrack_dagster.orchestration.schedules import schedule_name
from ordertrack_dagster_tests.helpers import orders_by_id, seed_orders
from ordertrack_dagster_tests.orchestration import DAGSTER_YAML, daemon_location

pytestmark = pytest.mark.slow

FLOW = daemon_location.FLOW
LOCATION = ("-m", daemon_location.__name__)
DEADLINE_SECONDS = 150
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def _command(name: str, *args: str) -> list[str]:
    """A console script of this environment, run by this interpreter."""
    return [sys.executable, str(Path(sys.executable).parent / name), *args]


@contextmanager
def _daemon(home: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run` in its own process group; the group (runs included) goes on exit."""
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            _command("dagster-daemon", "run", *LOCATION),
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield daemon
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()


def _wait_for_run(instance: DagsterInstance, daemon: subprocess.Popen, log: Path) -> DagsterRun:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        records = instance.get_run_records(RunsFilter(tags={FLOW_TAG: FLOW}), limit=1)
        if records and records[0].dagster_run.status in FINISHED:
            return records[0].dagster_run
        assert daemon.poll() is None, f"the daemon exited:\n{log.read_text()[-3000:]}"
        time.sleep(2)
    pytest.fail(f"no finished {FLOW} run within {DEADLINE_SECONDS} s:\n{log.read_text()[-3000:]}")


def test_the_daemon_runs_a_scheduled_tick(stack, stack_env, db, tmp_path):
    seeded = seed_orders(db, stack.simulator, FLOW, ["in_transit", "delivered"])
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DAGSTER_YAML, home / "dagster.yaml")
    root = str(DAGSTER_YAML.parent)
    pythonpath = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **stack_env, "DAGSTER_HOME": str(home), "PYTHONPATH": pythonpath}
    started = datetime.now(UTC)
    log = tmp_path / "daemon.log"

    # the instance (its storage) exists before the daemon and the CLI open it side by side
    with DagsterInstance.from_config(str(home)) as instance, _daemon(home, env, log) as daemon:
        # started through the instance, as the UI's toggle does; the next minute ticks
        start = subprocess.run(
            _command("dagster", "schedule", "start", schedule_name(FLOW), *LOCATION),
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
        )
        assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]
        run = _wait_for_run(instance, daemon, log)

    assert run.status == DagsterRunStatus.SUCCESS, log.read_text()[-3000:]
    assert run.tags["dagster/schedule_name"] == schedule_name(FLOW)
    assert run.tags["dagster/partition"] == FLOW
    orders = orders_by_id(db, seeded)
    assert {doc["courier_status"] for doc in orders.values()} == {"ud-in_transit", "dl-delivered"}
    assert all(doc["last_tracking_time"] >= started for doc in orders.values())
