"""The dead-run sensor (`reap_dead_runs`): it waits out run monitoring's own cancel, then
stops the run through the launcher and marks it failed."""

from datetime import UTC, datetime, timedelta

from dagster import DagsterEventType, DagsterRunStatus

from ordertrack_dagster.flows import MAX_RUNTIME_TAG
from ordertrack_dagster.orchestration.guards import PARTITION_TAG
from ordertrack_dagster.orchestration.sensors import reap_dead_runs

RUNTIME = timedelta(minutes=24)


def test_a_silent_run_is_left_to_run_monitoring_until_its_cancel_time_is_over(instance, add_run):
    run = add_run(
        DagsterRunStatus.STARTED,
        {PARTITION_TAG: "delhivery_b2c", MAX_RUNTIME_TAG: str(int(RUNTIME.total_seconds()))},
    )
    monitoring = timedelta(
        seconds=instance.run_monitoring_poll_interval_seconds
        + instance.run_monitoring_cancel_timeout_seconds
    )
    now = datetime.now(UTC)
    assert reap_dead_runs(instance, now + RUNTIME + timedelta(minutes=1)) == []
    assert reap_dead_runs(instance, now + RUNTIME + monitoring - timedelta(minutes=1)) == []

    reaped = reap_dead_runs(instance, now + RUNTIME + monitoring + timedelta(minutes=1))

    assert [str(dead) for dead in reaped] == [f"delhivery_b2c: {run.run_id}"]
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    canceling = instance.fetch_run_status_changes(DagsterEventType.RUN_CANCELING, limit=10).records
    assert [record.run_id for record in canceling] == [run.run_id]  # the launcher was asked
