"""End to end: one Dagster daemon launches scheduled, sensor and automation runs against the
embedded stack.

A daemon and its code server take tens of seconds to start on two cores, and its sensors tick
every 30 to 60 s: the module's tests share one daemon, one instance and one database (its runs
read `MONGODB_DB` from the daemon's environment), each test with orders and runs of its own.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.scheduler.instigation import InstigatorState, InstigatorType
from pymongo.database import Database

from ordertrack_dagster.analytics.assets import GROUP as ANALYTICS
from ordertrack_dagster.analytics.models import discover_models
from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.flows import MAX_RUNTIME_TAG
from ordertrack_dagster.killpoints import KILL_AT_ENV
from ordertrack_dagster.orchestration.guards import EFFECTS_TAG, FLOW_TAG
from ordertrack_dagster.orchestration.schedules import schedule_name
from ordertrack_dagster.orchestration.sensors import (
    AUTOMATION_SENSOR,
    DEAD_RUN_SENSOR,
    EFFECTS_SENSOR,
    FAILURE_SENSOR,
)
from ordertrack_dagster.resources.mongo import mongo_client
from ordertrack_dagster.resources.s3 import SOURCE_RUN_TAG
from ordertrack_dagster.tables import materialization_in_run
from ordertrack_dagster_tests.helpers import orders_by_id, seed_orders
from ordertrack_dagster_tests.orchestration import DAGSTER_YAML, daemon_location
from ordertrack_dagster_tests.test_cli_flow import dagster_materialize

pytestmark = pytest.mark.slow

FLOW = daemon_location.FLOW
#: The project's code location with the flow's schedule ticking every minute; its sensors
#: (run-status sensors among them) watch the runs of every location, the CLI's runs too.
LOCATION = ("-m", daemon_location.__name__)
DEADLINE_SECONDS = 150
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
#: The reaper is for what run monitoring cannot stop: with monitoring off it is the only
#: safeguard; it waits one monitoring poll and cancel time beyond the max runtime (short
#: here). Nothing else in this module depends on run monitoring.
QUICK_MONITORING = {"enabled": False, "poll_interval_seconds": 5, "cancel_timeout_seconds": 5}
#: The dead run's max runtime, and how long the reaper lets it go without an event.
MAX_RUNTIME_SECONDS = 1
ALLOWED_SILENCE_SECONDS = (
    MAX_RUNTIME_SECONDS
    + QUICK_MONITORING["poll_interval_seconds"]
    + QUICK_MONITORING["cancel_timeout_seconds"]
)


def _command(name: str, *args: str) -> list[str]:
    """A console script of this environment, run by this interpreter."""
    return [sys.executable, str(Path(sys.executable).parent / name), *args]


@dataclass(frozen=True)
class Daemon:
    """The module's running daemon: its instance, the environment and home of its processes,
    the database its runs write, its log."""

    process: subprocess.Popen
    instance: DagsterInstance
    home: Path
    env: dict[str, str]
    db: Database
    log: Path

    def assert_alive(self) -> None:
        assert self.process.poll() is None, f"the daemon exited:\n{self.log_tail()}"

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:]


def _home_and_env(stack_env: dict[str, str], home: Path) -> dict[str, str]:
    """A Dagster home with the project's dagster.yaml (run monitoring's times shortened), and
    the environment of its processes."""
    home.mkdir()
    settings = yaml.safe_load(DAGSTER_YAML.read_text())
    settings["run_monitoring"] |= QUICK_MONITORING
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))
    root = str(DAGSTER_YAML.parent)
    pythonpath = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return {**os.environ, **stack_env, "DAGSTER_HOME": str(home), "PYTHONPATH": pythonpath}


def _start(kind: str, names: list[str], daemon_home: Path, env: dict[str, str]) -> None:
    """Start schedules or sensors through the instance, as the UI's toggle does (side by side:
    each command loads the code location)."""
    starts = [
        subprocess.Popen(
            _command("dagster", kind, "start", name, *LOCATION),
            cwd=daemon_home,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    ]
    try:
        outputs = [start.communicate(timeout=120)[0] for start in starts]
    finally:
        for start in starts:  # a no-op unless a command outlived its time-out
            start.kill()
            start.wait()
    for start, output in zip(starts, outputs, strict=True):
        assert start.returncode == 0, output[-3000:]


@contextmanager
def _daemon_process(home: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
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


def _stored_state(
    instance: DagsterInstance, kind: InstigatorType, name: str
) -> InstigatorState | None:
    """The state the instance keeps for the sensor or schedule `name`, once it was started."""
    states = instance.all_instigator_state(instigator_type=kind)
    return next((state for state in states if state.instigator_name == name), None)


def _has_ticked(instance: DagsterInstance, sensor: str) -> bool:
    state = _stored_state(instance, InstigatorType.SENSOR, sensor)
    return bool(
        state and instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
    )


def _stop_schedule(instance: DagsterInstance, name: str) -> None:
    """Stop a started schedule through its stored state, as the UI's toggle does, without
    loading the code location again."""
    state = _stored_state(instance, InstigatorType.SCHEDULE, name)
    assert state is not None, f"{name} was never started"
    instance.stop_schedule(state.instigator_origin_id, state.selector_id)


def _wait_until_ticked(daemon: Daemon, sensors: list[str]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not all(_has_ticked(daemon.instance, sensor) for sensor in sensors):
        assert time.monotonic() < deadline, f"{sensors} never ticked:\n{daemon.log_tail()}"
        daemon.assert_alive()
        time.sleep(1)


@pytest.fixture(scope="module")
def daemon(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module, with the effects and failure sensors on and every sensor's
    first tick (it sets the sensor's cursor) behind it, so that the tests' runs come after."""
    folder = tmp_path_factory.mktemp("daemon")
    db_name = f"t_{uuid.uuid4().hex[:12]}"
    client = mongo_client(stack.env["MONGODB_URI"])
    home = folder / "dagster_home"
    env = _home_and_env({**stack.env, "MONGODB_DB": db_name}, home)
    log = folder / "daemon.log"
    # the instance (its storage) exists before the daemon and the CLI open it side by side
    with DagsterInstance.from_config(str(home)) as instance, _daemon_process(home, env, log) as p:
        running = Daemon(p, instance, home, env, client[db_name], log)
        _start("sensor", [EFFECTS_SENSOR, FAILURE_SENSOR], home, env)
        # the automation sensor runs by default: its first evaluation sees nothing written
        _wait_until_ticked(running, [EFFECTS_SENSOR, FAILURE_SENSOR, AUTOMATION_SENSOR])
        yield running
    client.drop_database(db_name)


def _wait_for_run(daemon: Daemon, tag: str, **tags: str) -> DagsterRun:
    """The flow's first run carrying `tag` (and `tags`), once it has finished: the schedule
    ticks every minute, so the latest may be a later tick's, still queued or running."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    runs = RunsFilter(tags={tag: FLOW, **tags})
    while time.monotonic() < deadline:
        records = daemon.instance.get_run_records(runs, limit=1, ascending=True)
        if records and records[0].dagster_run.status in FINISHED:
            return records[0].dagster_run
        daemon.assert_alive()
        time.sleep(2)
    pytest.fail(f"no finished {FLOW} run within {DEADLINE_SECONDS} s:\n{daemon.log_tail()}")


def _alerts_for(stack: EmbeddedStack, run_id: str) -> list[str]:
    return [m["text"] for m in stack.slack_messages() if run_id in m["text"]]


def test_the_daemon_marks_a_dead_cli_run_failed_and_slack_hears_of_it(stack, daemon):
    """ZOMBIE-RUN (daemon): a CLI run SIGKILLed after its fetch stays STARTED; with a max
    runtime of 1 s (the tag set on its record, as a launch with that tag would carry), the
    daemon's `tracking_dead_runs` marks it failed and the failure sensor posts to Slack.

    First in the module: its dead run holds the flow's queue slot until it is reaped."""
    seed_orders(daemon.db, stack.simulator, FLOW, ["in_transit"])
    stack_env = {**stack.env, "MONGODB_DB": daemon.db.name}
    killed = dagster_materialize(FLOW, {**stack_env, KILL_AT_ENV: "after_fetch"}, daemon.home)
    assert killed.returncode == -9, killed.stderr[-2000:]
    instance = daemon.instance
    [dead] = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    instance.add_run_tags(dead.run_id, {MAX_RUNTIME_TAG: str(MAX_RUNTIME_SECONDS)})
    # the sensor ticks every minute: started once the run has been silent long enough, its
    # first tick finds it dead
    [last] = instance.get_records_for_run(dead.run_id, limit=1, ascending=False).records
    time.sleep(max(0.0, last.timestamp + ALLOWED_SILENCE_SECONDS + 1 - time.time()))
    _start("sensor", [DEAD_RUN_SENSOR], daemon.home, daemon.env)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline and not _alerts_for(stack, dead.run_id):
        daemon.assert_alive()
        time.sleep(2)
    run = instance.get_run_by_id(dead.run_id)
    assert run.status == DagsterRunStatus.FAILURE, daemon.log_tail()
    [alert] = _alerts_for(stack, dead.run_id)
    assert f"flow *{FLOW}*" in alert and "max runtime" in alert


def _materialized_since(
    instance: DagsterInstance, keys: list[AssetKey], since: float
) -> set[AssetKey]:
    """The assets among `keys` materialized at or after the timestamp `since`."""
    events = {key: instance.get_latest_materialization_event(key) for key in keys}
    return {key for key, event in events.items() if event and event.timestamp >= since}


def test_the_daemon_runs_a_scheduled_tick_then_its_side_effects_and_the_analytics_models(
    stack, daemon
):
    """The tick launches the tracking-only job; once it succeeded, the daemon's run-status
    sensor launches the flow's effects run for it (contract §7), which emails its summary.

    Automation as shipped (dagster.yaml, the sensor running by default): once the tracking
    run has written, the next evaluation materializes the models that refresh after writes;
    a model on a cron waits for its tick."""
    seeded = seed_orders(daemon.db, stack.simulator, FLOW, ["in_transit", "delivered", "unmapped"])
    crons = {model.name: model.cron for model in discover_models()}
    models = {name: AssetKey([ANALYTICS, name]) for name in crons}
    after_writes = [key for name, key in models.items() if not crons[name]]
    on_cron = [key for name, key in models.items() if crons[name]]
    assert after_writes and on_cron
    started = datetime.now(UTC)

    # started through the instance, as the UI's toggle does; the next minute ticks
    _start("schedule", [schedule_name(FLOW)], daemon.home, daemon.env)
    run = _wait_for_run(daemon, FLOW_TAG, **{"dagster/schedule_name": schedule_name(FLOW)})
    # one tick is the test: later ticks' runs would only compete with its effects and models
    _stop_schedule(daemon.instance, schedule_name(FLOW))
    effects = _wait_for_run(daemon, EFFECTS_TAG, **{SOURCE_RUN_TAG: run.run_id})
    instance = daemon.instance
    # the run's own write: the schedule ticks every minute, so later runs may write after it
    written = materialization_in_run(instance, run.run_id, AssetKey("order_status_writes"))
    assert written is not None
    deadline = time.monotonic() + DEADLINE_SECONDS
    while _materialized_since(instance, after_writes, written.timestamp) != set(after_writes):
        assert time.monotonic() < deadline, daemon.log_tail()
        daemon.assert_alive()
        time.sleep(2)

    assert run.status == DagsterRunStatus.SUCCESS, daemon.log_tail()
    assert run.job_name == "tracking_only_job"
    assert run.tags["dagster/partition"] == FLOW
    orders = orders_by_id(daemon.db, seeded)
    mapped = [order for order in seeded if order.shipment.step != "unmapped"]
    assert {orders[o.order_id]["courier_status"] for o in mapped} == {
        "ud-in_transit",
        "dl-delivered",
    }
    assert all(doc["last_tracking_time"] >= started for doc in orders.values())
    assert effects.status == DagsterRunStatus.SUCCESS, daemon.log_tail()
    assert (effects.job_name, effects.tags[SOURCE_RUN_TAG]) == ("tracking_effects_job", run.run_id)
    assert [mail for mail in stack.mailbox() if run.run_id in str(mail)]

    assert _materialized_since(instance, on_cron, 0) == set()
    unmapped = instance.get_latest_materialization_event(models["unmapped_statuses"])
    metadata = unmapped.asset_materialization.metadata
    assert metadata["dagster/row_count"].value == 1
    assert [column.name for column in metadata["dagster/column_schema"].value.columns][:2] == [
        "flow",
        "courier_status",
    ]
