"""Start-up runs (contract §1): once per daemon start, only for flows that did not run lately."""

import time
from datetime import UTC, datetime, timedelta

from dagster import AssetMaterialization, DagsterRunStatus, build_sensor_context
from dagster._daemon.types import DaemonHeartbeat

from ordertrack_dagster.definitions import defs
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.orchestration import SENSORS
from ordertrack_dagster.orchestration.guards import FLOW_TAG, PARTITION_TAG
from ordertrack_dagster.orchestration.sensors import STARTUP_SENSOR, recent_run
from ordertrack_dagster.resources.state import SharedState

SENSOR = next(sensor for sensor in SENSORS if sensor.name == STARTUP_SENSOR)
REPOSITORY = defs.get_repository_def()


def daemon_started(instance, daemon_id):
    instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), "SENSOR", daemon_id))


def evaluate(instance, mongo, cursor=None):
    with build_sensor_context(
        instance=instance, cursor=cursor, resources={"mongo": mongo}, repository_def=REPOSITORY
    ) as context:
        return SENSOR.evaluate_tick(context)


def requested(result):
    return {request.partition_key: request for request in result.run_requests}


def test_first_tick_after_a_daemon_start_runs_every_flow_once(instance, mongo):
    daemon_started(instance, "daemon-a")
    first = evaluate(instance, mongo)
    assert set(requested(first)) == set(FLOWS)
    assert SENSOR.job_name == "tracking_only_job"  # its effects follow in their own run
    for flow, request in requested(first).items():
        assert request.tags[FLOW_TAG] == flow
        assert request.run_key == f"startup:daemon-a:{flow}"
    assert first.cursor == "daemon-a"

    later = evaluate(instance, mongo, cursor=first.cursor)
    assert later.run_requests == []
    assert "already handled" in later.skip_message


def test_a_restarted_daemon_runs_the_flows_again(instance, mongo):
    daemon_started(instance, "daemon-b")
    result = evaluate(instance, mongo, cursor="daemon-a")
    assert set(requested(result)) == set(FLOWS)
    assert result.cursor == "daemon-b"


def test_without_a_daemon_heartbeat_it_still_runs_once(instance, mongo):
    first = evaluate(instance, mongo)
    assert set(requested(first)) == set(FLOWS)
    assert evaluate(instance, mongo, cursor=first.cursor).run_requests == []


def test_flows_that_ran_lately_are_running_or_paused_are_left_alone(instance, mongo, db, add_run):
    daemon_started(instance, "daemon-c")
    recent = add_run(DagsterRunStatus.SUCCESS, {FLOW_TAG: "shiprocket"})
    running = add_run(DagsterRunStatus.STARTED, {PARTITION_TAG: "delhivery_b2b"})
    # a manual materialization of the write counts as a run of the flow
    instance.report_runless_asset_event(
        AssetMaterialization("order_status_writes", partition="velocity")
    )
    SharedState(db).pause("delhivery_express", datetime.now(UTC) + timedelta(minutes=8))

    result = evaluate(instance, mongo)
    assert result.run_requests == []
    for flow, reason in [
        ("shiprocket", recent.run_id),
        ("delhivery_b2b", running.run_id),
        ("velocity", "order_status_writes materialized"),
        ("delhivery_b2c", "rate limit"),
        ("delhivery_fallback", "rate limit"),
    ]:
        assert f"{flow}: " in result.skip_message and reason in result.skip_message
    assert result.cursor == "daemon-c"


def test_a_run_older_than_the_schedule_interval_does_not_count(instance, mongo, add_run):
    add_run(DagsterRunStatus.SUCCESS, {FLOW_TAG: "delhivery_fallback"})
    later = datetime.now(UTC) + timedelta(hours=2, minutes=1)  # the fallback runs every 2 h
    assert recent_run(instance, FLOWS["delhivery_fallback"], later) is None
    assert recent_run(instance, FLOWS["delhivery_fallback"], datetime.now(UTC)) is not None
