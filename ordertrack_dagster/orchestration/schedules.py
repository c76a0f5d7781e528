"""One schedule per flow, on the flow's cron from flows.py (contract §1), and one for the checks.

A flow's tick skips (never queues) while the flow still runs or its courier is paused, and
says why.
"""

from datetime import UTC, datetime

from dagster import (
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from ordertrack_dagster.flows import SCHEDULE_TIMEZONE, Flow, get_flow
from ordertrack_dagster.orchestration.guards import (
    default_schedule_status,
    hold_reason,
    run_tags,
)
from ordertrack_dagster.orchestration.jobs import freshness_job, tracking_only_job
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.tables import flow_partitions

# Often enough to notice within one threshold (three intervals of an 8-minute flow).
FRESHNESS_CRON = "*/10 * * * *"


def schedule_name(flow_key: str) -> str:
    return f"{flow_key}_schedule"


def build_flow_schedule(flow: Flow) -> ScheduleDefinition:
    """The schedule of one flow: its partition of the tracking-only job, tagged with the flow
    (its side effects follow in their own run: the sensor `tracking_effects_runs`)."""

    @schedule(
        name=schedule_name(flow.key),
        cron_schedule=flow.cron,
        execution_timezone=SCHEDULE_TIMEZONE,
        job=tracking_only_job,
        default_status=default_schedule_status(),
        description=f"Tracks {flow.courier_label} orders ({flow.cron}, India time); skips while "
        "the flow still runs or the courier is paused.",
    )
    def _flow_schedule(
        context: ScheduleEvaluationContext, mongo: MongoResource
    ) -> RunRequest | SkipReason:
        state = SharedState(mongo.get_database())
        reason = hold_reason(context.instance, flow, state, datetime.now(UTC))
        if reason is not None:
            return SkipReason(reason)
        return RunRequest(partition_key=flow.key, tags=run_tags(flow))

    return _flow_schedule


def build_freshness_schedule() -> ScheduleDefinition:
    return ScheduleDefinition(
        name="tracking_freshness_schedule",
        job=freshness_job,
        cron_schedule=FRESHNESS_CRON,
        execution_timezone=SCHEDULE_TIMEZONE,
        default_status=default_schedule_status(),
        description="Runs the freshness checks of every flow, apart from the tracking runs.",
    )


def build_schedules() -> list[ScheduleDefinition]:
    """A schedule per flow that has a partition, and the checks' (default status from ENV now)."""
    flows = [build_flow_schedule(get_flow(key)) for key in flow_partitions.get_partition_keys()]
    return [*flows, build_freshness_schedule()]


SCHEDULES = build_schedules()
