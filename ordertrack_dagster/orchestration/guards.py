"""Whether a flow may start now: the rules its schedule and the start-up sensor share.

Contract §1: a tick that finds its flow still running is skipped, not queued. Contract §4: a stored
courier pause holds the flow until its resume time. Both rules read shared state (the Dagster
instance and MongoDB), so they hold across processes, machines and restarts.
"""

import os
from datetime import UTC, datetime

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRecord,
    RunsFilter,
)

from ordertrack_dagster.couriers import blocking_pause, describe_pause
from ordertrack_dagster.flows import Flow, max_runtime_tag
from ordertrack_dagster.resources.state import SharedState

FLOW_TAG = "ordertrack/flow"  # contract §9: on every run of a job doing a flow's tracking
EFFECTS_TAG = "ordertrack/effects"  # on every run of the effects job: its own per-flow limit
PARTITION_TAG = "dagster/partition"  # set by Dagster on every partitioned run, UI runs too

# A run in any of these may still send courier requests or write orders. NOT_STARTED and
# QUEUED count too: the run coordinator would start them after this tick's run.
IN_FLIGHT_STATUSES = (
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
)


def automation_on_by_default() -> bool:
    """Contract §8: `ENV=PROD` turns schedules and sensors on; anywhere else they start stopped."""
    return os.environ.get("ENV", "").strip() == "PROD"


def default_schedule_status() -> DefaultScheduleStatus:
    on = automation_on_by_default()
    return DefaultScheduleStatus.RUNNING if on else DefaultScheduleStatus.STOPPED


def default_sensor_status() -> DefaultSensorStatus:
    on = automation_on_by_default()
    return DefaultSensorStatus.RUNNING if on else DefaultSensorStatus.STOPPED


def run_tags(flow: Flow) -> dict[str, str]:
    """The tags of every run a schedule or sensor launches for the flow."""
    return {FLOW_TAG: flow.key, **max_runtime_tag(flow)}


def in_flight_run(instance: DagsterInstance, flow_key: str) -> RunRecord | None:
    """A run of the flow's tracking that has not finished, launched by us or by hand (UI,
    CLI, the asset graph). A run of the flow's side effects alone (`EFFECTS_TAG`) is not
    one: the next tracking run does not wait for it (contract §7)."""
    for tag in (FLOW_TAG, PARTITION_TAG):
        records = instance.get_run_records(
            RunsFilter(tags={tag: flow_key}, statuses=list(IN_FLIGHT_STATUSES))
        )
        for record in records:
            if EFFECTS_TAG not in record.dagster_run.tags:
                return record
    return None


def describe_run(record: RunRecord) -> str:
    run = record.dagster_run
    created = record.create_timestamp.astimezone(UTC)
    return f"run {run.run_id} ({run.status.value}, created {created:%Y-%m-%d %H:%M:%S} UTC)"


def hold_reason(
    instance: DagsterInstance, flow: Flow, state: SharedState, now: datetime
) -> str | None:
    """Why the flow must not start now, or None when it may."""
    running = in_flight_run(instance, flow.key)
    if running is not None:
        return f"{flow.key} has a run in flight, {describe_run(running)}: skipped, not queued"
    resume_at = blocking_pause(state, flow.budget_scope, now)
    if resume_at is not None:
        return f"{describe_pause(flow, resume_at)}; skipped until then"
    return None
