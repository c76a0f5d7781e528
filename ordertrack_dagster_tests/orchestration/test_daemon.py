"""End to end: a real Dagster daemon's sensors against the embedded stack (its schedule ticks:
the deploy tests)."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.scheduler.instigation import InstigatorType

from ordertrack_dagster.analytics.assets import GROUP as ANALYTICS
from ordertrack_dagster.analytics.models import discover_models
from ordertrack_dagster.flows import MAX_RUNTIME_TAG
from ordertrack_dagster.killpoints import KILL_AT_ENV
from ordertrack_dagster.orchestration.sensors import (
    AUTOMATION_SENSOR,
    DEAD_RUN_SENSOR,
    FAILURE_SENSOR,
)
from ordertrack_dagster_tests.helpers import seed_orders
from ordertrack_dagster_tests.orchestration import DAGSTER_YAML, daemon_location
from ordertrack_dagster_tests.test_cli_flow import dagster_materialize

pytestmark = pytest.mark.slow

FLOW = daemon_location.FLOW
#: The project's own code location, as the `dagster` CLI runs it: the failure sensor watches
#: the runs of its own location only. (A schedule's tick run by a daemon: the deploy tests.)
PROJECT = ("-m", "ordertrack_dagster.definitions")
DEADLINE_SECONDS = 150


def _command(name: str, *args: str) -> list[str]:
    """A console script of this environment, run by this interpreter."""
    return [sys.executable, str(Path(sys.executable).parent / name), *args]


def _home_and_env(
    stack_env: dict[str, str], tmp_path: Path, monitoring: dict[str, int] | None = None
) -> tuple[Path, dict[str, str]]:
    """A Dagster home with the project's dagster.yaml (run monitoring's times overridden by
    `monitoring`), and the environment of its processes."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    settings = yaml.safe_load(DAGSTER_YAML.read_text())
    settings["run_monitoring"] |= monitoring or {}
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))
    root = str(DAGSTER_YAML.parent)
    pythonpath = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return home, {**os.environ, **stack_env, "DAGSTER_HOME": str(home), "PYTHONPATH": pythonpath}


def _start(kind: str, name: str, home: Path, env: dict[str, str]) -> None:
    """Start a schedule or sensor through the instance, as the UI's toggle does."""
    start = subprocess.run(
        _command("dagster", kind, "start", name, *PROJECT),
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
    )
    assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]


@contextmanager
def _daemon(home: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run` in its own process group; the group (runs included) goes on exit."""
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            _command("dagster-daemon", "run", *PROJECT),
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


def _has_ticked(instance: DagsterInstance, sensor: str) -> bool:
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == sensor:
            return bool(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1))
    return False


def test_the_daemon_marks_a_dead_cli_run_failed_and_slack_hears_of_it(
    stack, stack_env, db, tmp_path
):
    """ZOMBIE-RUN (daemon): a CLI run SIGKILLed after its fetch stays STARTED; with a max
    runtime of 20 s (the tag set on its record, as a launch with that tag would carry), the
    daemon's `tracking_dead_runs` marks it failed and the failure sensor posts to Slack."""
    seed_orders(db, stack.simulator, FLOW, ["in_transit"])
    # The reaper is for what run monitoring cannot stop: with monitoring off it is the only
    # safeguard; it waits one monitoring poll and cancel time beyond the max runtime (short).
    quick = {"enabled": False, "poll_interval_seconds": 5, "cancel_timeout_seconds": 5}
    home, env = _home_and_env(stack_env, tmp_path, quick)
    killed = dagster_materialize(FLOW, {**stack_env, KILL_AT_ENV: "after_fetch"}, home)
    assert killed.returncode == -9, killed.stderr[-2000:]
    log = tmp_path / "daemon.log"
    with DagsterInstance.from_config(str(home)) as instance:
        [dead] = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
        instance.add_run_tags(dead.run_id, {MAX_RUNTIME_TAG: "20"})
        with _daemon(home, env, log) as daemon:
            _start("sensor", FAILURE_SENSOR, home, env)  # its cursor starts at its first tick
            deadline = time.monotonic() + DEADLINE_SECONDS
            while not _has_ticked(instance, FAILURE_SENSOR) and time.monotonic() < deadline:
                time.sleep(1)
            _start("sensor", DEAD_RUN_SENSOR, home, env)
            while time.monotonic() < deadline and not _alerts_for(stack, dead.run_id):
                assert daemon.poll() is None, f"the daemon exited:\n{log.read_text()[-3000:]}"
                time.sleep(2)
        run = instance.get_run_by_id(dead.run_id)
    assert run.status == DagsterRunStatus.FAILURE, log.read_text()[-3000:]
    [alert] = _alerts_for(stack, dead.run_id)
    assert f"flow *{FLOW}*" in alert and "max runtime" in alert


def _alerts_for(stack, run_id: str) -> list[str]:
    return [m["text"] for m in stack.slack_messages() if run_id in m["text"]]


def _materialized(instance: DagsterInstance, keys: list[AssetKey]) -> set[AssetKey]:
    return {key for key in keys if instance.get_latest_materialization_event(key) is not None}


def test_the_daemon_refreshes_the_analytics_models_after_a_tracking_run(
    stack, stack_env, db, tmp_path
):
    """Automation as shipped (dagster.yaml, the sensor running by default): once a tracking
    run has written, the next evaluation materializes the models that refresh after writes;
    a model on a cron waits for its tick."""
    seed_orders(db, stack.simulator, FLOW, ["in_transit", "unmapped"])
    home, env = _home_and_env(stack_env, tmp_path)
    log = tmp_path / "daemon.log"
    crons = {model.name: model.cron for model in discover_models()}
    models = {name: AssetKey([ANALYTICS, name]) for name in crons}
    after_writes = [key for name, key in models.items() if not crons[name]]
    on_cron = [key for name, key in models.items() if crons[name]]
    assert after_writes and on_cron
    with DagsterInstance.from_config(str(home)) as instance, _daemon(home, env, log):
        # its first evaluation sees nothing written yet, so nothing is stale
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not _has_ticked(instance, AUTOMATION_SENSOR):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        tracking = dagster_materialize(FLOW, stack_env, home)
        assert tracking.returncode == 0, tracking.stderr[-3000:]
        while _materialized(instance, after_writes) != set(after_writes):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(2)
        assert _materialized(instance, on_cron) == set()
        unmapped = instance.get_latest_materialization_event(models["unmapped_statuses"])
    metadata = unmapped.asset_materialization.metadata
    assert metadata["dagster/row_count"].value == 1
    assert [column.name for column in metadata["dagster/column_schema"].value.columns][:2] == [
        "flow",
        "courier_status",
    ]
