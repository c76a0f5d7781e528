"""Schedule ticks (contract §1, §4), ENV gating (§8) and the shipped dagster.yaml (§9)."""

import shutil
from datetime import UTC, datetime, timedelta

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    build_schedule_context,
)

from ordertrack_dagster.definitions import defs
from ordertrack_dagster.flows import FLOWS, MAX_RUNTIME_TAG, SCHEDULE_TIMEZONE, schedule_interval
from ordertrack_dagster.orchestration import SCHEDULES
from ordertrack_dagster.orchestration.guards import (
    EFFECTS_TAG,
    FLOW_TAG,
    PARTITION_TAG,
)
from ordertrack_dagster.orchestration.schedules import build_schedules, schedule_name
from ordertrack_dagster.orchestration.sensors import AUTOMATION_SENSOR, build_sensors
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster_tests.orchestration import DAGSTER_YAML

BY_NAME = {schedule.name: schedule for schedule in SCHEDULES}
REPOSITORY = defs.get_repository_def()


def tick(instance, mongo, flow):
    # entered, so its Dagster context is restored on exit rather than by the garbage collector
    with build_schedule_context(
        instance=instance, resources={"mongo": mongo}, repository_def=REPOSITORY
    ) as context:
        return BY_NAME[schedule_name(flow)].evaluate_tick(context)


def test_every_flow_has_its_cron_in_india_time():
    for flow in FLOWS.values():
        schedule = BY_NAME[schedule_name(flow.key)]
        assert schedule.cron_schedule == flow.cron
        assert schedule.execution_timezone == SCHEDULE_TIMEZONE
        # the tracking part alone: its side effects follow in their own run (contract §7)
        assert schedule.job_name == "tracking_only_job"


def test_schedule_interval_is_the_longest_gap_between_ticks():
    assert schedule_interval("*/8 * * * *") == timedelta(minutes=8)
    assert schedule_interval("0 */2 * * *") == timedelta(hours=2)


def test_a_tick_requests_its_flows_partition_with_the_flow_tag(instance, mongo):
    result = tick(instance, mongo, "shiprocket")
    assert result.skip_message is None
    [request] = result.run_requests
    assert request.partition_key == "shiprocket"
    assert request.tags[FLOW_TAG] == "shiprocket"
    # run monitoring cancels it after three schedule intervals (ZOMBIE-RUN, HUNG-RUN)
    assert request.tags[MAX_RUNTIME_TAG] == str(3 * 8 * 60)


@pytest.mark.parametrize(
    "status", [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
)
def test_a_tick_skips_while_its_flow_runs(instance, mongo, add_run, status):
    running = add_run(status, {FLOW_TAG: "velocity", PARTITION_TAG: "velocity"})
    result = tick(instance, mongo, "velocity")
    assert result.run_requests == []
    assert running.run_id in result.skip_message
    assert "skipped, not queued" in result.skip_message


def test_a_manual_run_of_the_partition_holds_the_schedule_too(instance, mongo, add_run):
    manual = add_run(DagsterRunStatus.STARTED, {PARTITION_TAG: "delhivery_b2b"})
    result = tick(instance, mongo, "delhivery_b2b")
    assert manual.run_id in result.skip_message


def test_a_flows_effects_run_does_not_hold_its_next_tick(instance, mongo, add_run):
    """Side effects are off the critical path (contract §7): their run in flight (queued or
    sending) is no tracking run, so the tick goes ahead."""
    add_run(DagsterRunStatus.STARTED, {EFFECTS_TAG: "velocity", PARTITION_TAG: "velocity"})
    add_run(DagsterRunStatus.QUEUED, {EFFECTS_TAG: "velocity", PARTITION_TAG: "velocity"})
    [request] = tick(instance, mongo, "velocity").run_requests
    assert request.partition_key == "velocity"


def test_finished_runs_and_other_flows_do_not_hold_a_tick(instance, mongo, add_run):
    add_run(DagsterRunStatus.SUCCESS, {FLOW_TAG: "velocity", PARTITION_TAG: "velocity"})
    add_run(DagsterRunStatus.FAILURE, {FLOW_TAG: "velocity", PARTITION_TAG: "velocity"})
    add_run(DagsterRunStatus.STARTED, {FLOW_TAG: "shiprocket", PARTITION_TAG: "shiprocket"})
    [request] = tick(instance, mongo, "velocity").run_requests
    assert request.partition_key == "velocity"


def test_a_stored_courier_pause_skips_the_flows_sharing_its_limit(instance, mongo, db):
    resume_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=7)
    SharedState(db).pause("delhivery_express", resume_at)
    for flow in ("delhivery_b2c", "delhivery_fallback"):
        result = tick(instance, mongo, flow)
        assert result.run_requests == []
        assert f"{resume_at:%Y-%m-%d %H:%M:%S} UTC" in result.skip_message
        assert "rate limit" in result.skip_message
    assert tick(instance, mongo, "delhivery_b2b").run_requests  # its own limit, not paused


def test_a_pause_short_enough_to_wait_out_does_not_skip(instance, mongo, db):
    SharedState(db).pause("shiprocket", datetime.now(UTC) + timedelta(seconds=20))
    assert tick(instance, mongo, "shiprocket").run_requests


@pytest.mark.parametrize(
    "env, on", [("PROD", True), ("DEV", False), ("prod-like", False), (None, False)]
)
def test_schedules_and_sensors_run_by_default_only_in_prod(monkeypatch, env, on):
    if env is None:
        monkeypatch.delenv("ENV", raising=False)
    else:
        monkeypatch.setenv("ENV", env)
    expected_schedule = DefaultScheduleStatus.RUNNING if on else DefaultScheduleStatus.STOPPED
    expected_sensor = DefaultSensorStatus.RUNNING if on else DefaultSensorStatus.STOPPED
    assert {s.default_status for s in build_schedules()} == {expected_schedule}
    sensors = {s.name: s.default_status for s in build_sensors()}
    # the analytics models' automation launches nothing that calls out: on everywhere
    assert sensors.pop(AUTOMATION_SENSOR) == DefaultSensorStatus.RUNNING
    assert set(sensors.values()) == {expected_sensor}


def test_shipped_dagster_yaml_limits_one_tracking_and_one_effects_run_per_flow(tmp_path):
    """Each under its own tag: a limit on `dagster/partition`, which both carry, would queue
    a flow's effects run behind its next tracking run and the other way round."""
    shutil.copy(DAGSTER_YAML, tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits
    by_key = {limit["key"]: limit for limit in limits}
    assert set(by_key) == {FLOW_TAG, EFFECTS_TAG}
    for limit in by_key.values():
        assert limit["limit"] == 1
        assert limit["value"] == {"applyLimitPerUniqueValue": True}


@pytest.mark.parametrize(
    "job, tag",
    [
        ("tracking_job", FLOW_TAG),
        ("tracking_only_job", FLOW_TAG),
        ("repoll_orders_job", FLOW_TAG),
        ("tracking_effects_job", EFFECTS_TAG),
    ],
)
def test_every_run_of_a_flow_job_carries_its_limits_tag(job, tag):
    """Whoever launches it (Launchpad, backfill, schedule, sensor): the job's partition tags,
    which Dagster adds to every partitioned run, carry the tag the run queue limits."""
    tags = REPOSITORY.get_job(job).get_tags_for_partition_key("shiprocket", None)
    assert tags[tag] == "shiprocket"
    assert ({FLOW_TAG, EFFECTS_TAG} - {tag}).isdisjoint(tags)
    assert tags[MAX_RUNTIME_TAG] == str(3 * 8 * 60)
