"""Sensors: the start-up runs (contract §1), the drain, the side effects' runs (§7), dead runs
marked failed, and the Slack alert on a failed run.

The old service ran every flow once when it started. Here "started" means a new Dagster
daemon process: the sensor daemon's id changes on every (re)start, and the cursor remembers
the id it already handled, so later ticks of the same daemon request nothing.
"""

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetRecordsFilter,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    EventLogRecord,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler

from ordertrack_dagster.effects import TABLELESS_EFFECTS, EffectsSettings, waiting_effects
from ordertrack_dagster.flows import (
    MAX_RUNTIME_TAG,
    Flow,
    get_flow,
    max_runtime,
    max_runtime_tag,
    schedule_interval,
)
from ordertrack_dagster.orchestration.guards import (
    EFFECTS_TAG,
    FLOW_TAG,
    IN_FLIGHT_STATUSES,
    PARTITION_TAG,
    default_sensor_status,
    describe_run,
    hold_reason,
    run_tags,
)
from ordertrack_dagster.orchestration.jobs import tracking_effects_job, tracking_only_job
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.resources.s3 import SOURCE_RUN_TAG
from ordertrack_dagster.resources.slack import OrdertrackSlackResource
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.security.redaction import redact
from ordertrack_dagster.tables import ORDER_STATUS_WRITES, flow_partitions, latest_materialization

STARTUP_SENSOR = "tracking_startup_runs"
DRAIN_SENSOR = "tracking_drain_runs"
EFFECTS_SENSOR = "tracking_effects_runs"
EFFECTS_CATCH_UP_SENSOR = "tracking_effects_catch_up"
DEAD_RUN_SENSOR = "tracking_dead_runs"
FAILURE_SENSOR = "tracking_run_failure_alert"
NO_HEARTBEAT = "no-daemon-heartbeat"
MAX_ERROR_CHARS = 600
#: A drain run is started when its budget frees within this: about what a run needs from its
#: launch to its first request (Dagster's start-up, the selection), and the sensor's interval.
DRAIN_LEAD_SECONDS = 30.0
# -- start-up runs -----------------------------------------------------------------------


def daemon_id(instance: DagsterInstance) -> str:
    """The id of the sensor daemon now running; a new one after every daemon (re)start.

    An instance set to skip heartbeats has none: then only the sensor's very first tick runs.
    """
    heartbeat = instance.get_daemon_heartbeats().get("SENSOR")
    return heartbeat.daemon_id if heartbeat and heartbeat.daemon_id else NO_HEARTBEAT


def recent_run(instance: DagsterInstance, flow: Flow, now: datetime) -> str | None:
    """What shows the flow ran within one schedule interval (a tagged run or a write), if any."""
    since = now - schedule_interval(flow.cron)
    runs = instance.get_run_records(
        RunsFilter(tags={FLOW_TAG: flow.key}, created_after=since), limit=1
    )
    if runs:
        return f"ran recently: {describe_run(runs[0])}"
    writes = instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=ORDER_STATUS_WRITES,
            asset_partitions=[flow.key],
            after_timestamp=since.timestamp(),
        ),
        limit=1,
    ).records
    if writes:
        written = datetime.fromtimestamp(writes[0].timestamp, UTC)
        return (
            f"ran recently: order_status_writes materialized {written:%Y-%m-%d %H:%M:%S} UTC "
            f"by run {writes[0].run_id}"
        )
    return None


def build_startup_sensor() -> SensorDefinition:
    @sensor(
        name=STARTUP_SENSOR,
        job=tracking_only_job,
        minimum_interval_seconds=30,
        default_status=default_sensor_status(),
        description="When the daemon starts, runs each flow once unless it ran within its "
        "schedule interval, is still running or its courier is paused.",
    )
    def _startup_runs(context: SensorEvaluationContext, mongo: MongoResource) -> SensorResult:
        started_by = daemon_id(context.instance)
        if context.cursor == started_by:
            return SensorResult(
                skip_reason=SkipReason(f"start-up runs already handled for daemon {started_by}")
            )
        state = SharedState(mongo.get_database())
        now = datetime.now(UTC)
        requests: list[RunRequest] = []
        held: list[str] = []
        for key in flow_partitions.get_partition_keys():
            flow = get_flow(key)
            reason = hold_reason(context.instance, flow, state, now) or recent_run(
                context.instance, flow, now
            )
            if reason is not None:
                held.append(f"{key}: {reason}")
                continue
            requests.append(
                RunRequest(
                    run_key=f"startup:{started_by}:{key}",
                    partition_key=key,
                    tags=run_tags(flow),
                )
            )
        for line in held:
            context.log.info(f"no start-up run for {line}")
        skip = None if requests else SkipReason("no start-up run needed: " + "; ".join(held))
        return SensorResult(run_requests=requests, skip_reason=skip, cursor=started_by)

    return _startup_runs


# -- draining what one run left --------------------------------------------------------


def latest_write(instance: DagsterInstance, flow: Flow) -> EventLogRecord | None:
    """The flow's latest `order_status_writes` materialization (a finished write)."""
    return latest_materialization(instance, ORDER_STATUS_WRITES, flow.key)


def work_left(instance: DagsterInstance, flow: Flow) -> tuple[str, str] | None:
    """(run id, why) when the flow's last write shows orders still due beyond it and that run
    made progress: it hit its cap, or deferred orders for a pause or the budget after asking
    some. A run whose orders the courier did not answer (an outage, keys it does not know)
    starts nothing: the schedule retries at its own pace instead of hammering a broken API."""
    write = latest_write(instance, flow)
    if write is None:
        return None
    materialization = write.event_log_entry.asset_materialization
    figures = {
        name: value.value
        for name, value in (materialization.metadata if materialization else {}).items()
    }

    def count(name: str) -> int:
        return int(figures.get(name, 0) or 0)

    selected, deferred = count("selected"), count("deferred")
    answered = selected - deferred - count("failed") - count("not_found")
    if answered <= 0:
        return None
    if deferred and deferred < selected:
        return write.run_id, f"{deferred} of {selected} orders deferred"
    if selected >= flow.cap and not deferred:
        return write.run_id, f"the run took its cap of {flow.cap} orders"
    return None


def budget_frees_in(state: SharedState, flow: Flow) -> float:
    """Seconds until the flow's budget has room for half a block of its requests (0 for a
    flow without a budget): a run started before then would only wait for it."""
    budget = flow.rate_budget
    if budget is None:
        return 0.0
    return state.budget_frees_in(flow.budget_scope, budget, max(1, flow.workers // 2))


def build_drain_sensor() -> SensorDefinition:
    @sensor(
        name=DRAIN_SENSOR,
        job=tracking_only_job,
        minimum_interval_seconds=30,
        default_status=default_sensor_status(),
        description="Starts a flow's next run once its last run is over and its request "
        "budget frees within 30 s, when that run left orders due (cap reached, or orders "
        "deferred for a pause, the budget or the fetch's time box) and the courier answered "
        "some, so the courier is kept busy up to the budget instead of waiting for the next "
        "tick.",
    )
    def _drain(context: SensorEvaluationContext, mongo: MongoResource) -> SensorResult:
        state = SharedState(mongo.get_database())
        now = datetime.now(UTC)
        requests: list[RunRequest] = []
        for key in flow_partitions.get_partition_keys():
            flow = get_flow(key)
            left = work_left(context.instance, flow)
            if left is None or hold_reason(context.instance, flow, state, now) is not None:
                continue
            run_id, why = left
            frees_in = budget_frees_in(state, flow)
            if frees_in > DRAIN_LEAD_SECONDS:
                context.log.info(
                    f"{key}: {why} in run {run_id}; its request budget frees in "
                    f"{frees_in:.0f} s, so the next run starts then"
                )
                continue
            context.log.info(f"{key}: {why} in run {run_id}; starting the next run")
            requests.append(
                RunRequest(run_key=f"drain:{key}:{run_id}", partition_key=key, tags=run_tags(flow))
            )
        skip = None if requests else SkipReason("no flow has orders left over by its last run")
        return SensorResult(run_requests=requests, skip_reason=skip)

    return _drain


# -- the side effects' runs (contract §7, "Side effects off the critical path") ---------------


def effects_tags(flow: Flow, source_run_id: str | None) -> dict[str, str]:
    """The tags of a flow's effects run reporting the tracking run `source_run_id`."""
    source = {SOURCE_RUN_TAG: source_run_id} if source_run_id else {}
    return {EFFECTS_TAG: flow.key, **source, **max_runtime_tag(flow)}


def _written(instance: DagsterInstance, run_id: str) -> dict[str, Any] | None:
    """The metadata of the run's `order_status_writes` (None when the run did not write)."""
    events = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records
    for record in events:
        materialization = record.asset_materialization
        if record.asset_key == ORDER_STATUS_WRITES and materialization is not None:
            return {name: value.value for name, value in materialization.metadata.items()}
    return None


def effects_after(instance: DagsterInstance, run: DagsterRun) -> RunRequest | SkipReason:
    """The effects run following a successful tracking run, when it wrote: once per tracking
    run (the run key), pinned to that run's tables (`SOURCE_RUN_TAG`), so two tracking runs
    finishing before the first effects run starts are each reported. A run that selected no
    order has nothing to send or report: the catch-up sensor sends any retries due."""
    if run.job_name != tracking_only_job.name:
        return SkipReason(f"run {run.run_id} is of {run.job_name}, not {tracking_only_job.name}")
    flow_key = run.tags.get(PARTITION_TAG)
    figures = _written(instance, run.run_id)
    if flow_key is None or figures is None:
        return SkipReason(f"run {run.run_id} wrote no order_status_writes")
    if int(figures.get("selected") or 0) <= 0:
        return SkipReason(f"run {run.run_id} of {flow_key} selected no order: nothing to send")
    return RunRequest(
        run_key=f"effects:{run.run_id}",
        partition_key=flow_key,
        tags=effects_tags(get_flow(flow_key), run.run_id),
    )


def build_effects_sensor() -> SensorDefinition:
    # All code locations, as the failure sensor: a `dagster` CLI run of the job has none
    # behind it; `effects_after` keeps the runs of tracking_only_job.
    @run_status_sensor(
        name=EFFECTS_SENSOR,
        run_status=DagsterRunStatus.SUCCESS,
        monitor_all_code_locations=True,
        request_job=tracking_effects_job,
        minimum_interval_seconds=30,
        default_status=default_sensor_status(),
        description="Starts a flow's side effects (outbox drain, Slack, CRM, S3 logs, email) "
        "in their own run once a tracking_only_job run of the flow succeeded and selected "
        "orders, reporting that run; one effects run per flow at a time (tag "
        "ordertrack/effects), never holding the flow's next tracking run.",
    )
    def _effects(context: RunStatusSensorContext) -> RunRequest | None:
        request = effects_after(context.instance, context.dagster_run)
        if isinstance(request, SkipReason):
            # None, not the SkipReason: Dagster ends a tick at the first run whose evaluation
            # returns something, so only requests take a tick each (at most one per 30 s)
            context.log.info(request.skip_message or "")
            return None
        return request

    return _effects


def effects_run_recently(instance: DagsterInstance, flow: Flow, now: datetime) -> bool:
    """Whether an effects run of the flow is in flight or was created within one schedule
    interval (a tracking run's effects, or a catch-up)."""
    mine = {EFFECTS_TAG: flow.key}
    in_flight = instance.get_run_records(
        RunsFilter(tags=mine, statuses=list(IN_FLIGHT_STATUSES)), limit=1
    )
    since = now - schedule_interval(flow.cron)
    return bool(in_flight) or bool(
        instance.get_run_records(RunsFilter(tags=mine, created_after=since), limit=1)
    )


def build_effects_catch_up_sensor() -> SensorDefinition:
    @sensor(
        name=EFFECTS_CATCH_UP_SENSOR,
        job=tracking_effects_job,
        minimum_interval_seconds=60,
        default_status=default_sensor_status(),
        description="Starts a flow's effects run when its outbox has deliveries due (retries) "
        "or undrained markers (a tracking run that failed after writing) and no effects run "
        "of the flow ran within its schedule interval: at most once per interval, as the "
        "retries went when every tick sent its own side effects.",
    )
    def _catch_up(context: SensorEvaluationContext, mongo: MongoResource) -> SensorResult:
        db, now = mongo.get_database(), datetime.now(UTC)
        requests: list[RunRequest] = []
        for key in flow_partitions.get_partition_keys():
            flow = get_flow(key)
            if effects_run_recently(context.instance, flow, now):
                continue
            why = waiting_effects(db, key, now)
            if why is None:
                continue
            context.log.info(f"{key}: {why}; starting an effects run")
            interval = int(schedule_interval(flow.cron).total_seconds())
            write = latest_write(context.instance, flow)
            source = write.run_id if write else None
            requests.append(
                RunRequest(
                    run_key=f"effects-catch-up:{key}:{int(now.timestamp()) // interval}",
                    partition_key=key,
                    tags=effects_tags(flow, source),
                    # without a stored write, the reports have no table to load
                    asset_selection=None if source else TABLELESS_EFFECTS,
                )
            )
        skip = None if requests else SkipReason("no flow has side effects waiting")
        return SensorResult(run_requests=requests, skip_reason=skip)

    return _catch_up


# -- dead runs ---------------------------------------------------------------------------


def _allowed_silence(instance: DagsterInstance, run_tags_: dict[str, str], flow: Flow) -> float:
    """Seconds a run may go without any event: its max runtime (tag, else the flow's), plus
    the time run monitoring takes to notice that and cancel the run itself (one poll and its
    cancel timeout), so the two never race over a run the launcher can still stop."""
    try:
        runtime = float(run_tags_[MAX_RUNTIME_TAG])
    except (KeyError, ValueError):
        runtime = max_runtime(flow).total_seconds()
    return (
        runtime
        + instance.run_monitoring_poll_interval_seconds
        + instance.run_monitoring_cancel_timeout_seconds
    )


def _terminate(instance: DagsterInstance, run_id: str) -> None:
    """Ask the run launcher to stop the run's process (a K8s pod may still be running it); a
    launcher that cannot (the process is gone, a CLI run it never launched) is no obstacle."""
    with contextlib.suppress(Exception):  # the run is marked failed whatever the launcher says
        instance.run_launcher.terminate(run_id)


@dataclass(frozen=True)
class DeadRun:
    """A run marked failed by the reaper, and why."""

    run: DagsterRun
    reason: str

    def __str__(self) -> str:
        return f"{self.run.tags.get(PARTITION_TAG)}: {self.run.run_id}"


def reap_dead_runs(instance: DagsterInstance, now: datetime) -> list[DeadRun]:
    """Stop and mark failed every STARTED run of a flow with no event for longer than its max
    runtime and the time run monitoring takes to cancel it.

    Run monitoring cannot see a run whose process died when nobody launched it through the
    run launcher (a `dagster` CLI run killed with SIGKILL, a lost host): it stays STARTED
    and every later tick of its flow skips. Terminated (when the launcher can) and reported
    failed here, it frees the flow, and Slack hears of it. Returns what was marked.
    """
    reaped: list[DeadRun] = []
    for key in flow_partitions.get_partition_keys():
        flow = get_flow(key)
        started = instance.get_run_records(
            RunsFilter(tags={PARTITION_TAG: key}, statuses=[DagsterRunStatus.STARTED])
        )
        for record in started:
            run = record.dagster_run
            events = instance.get_records_for_run(run.run_id, limit=1, ascending=False).records
            last = events[0].timestamp if events else record.create_timestamp.timestamp()
            silence = now.timestamp() - last
            allowed = _allowed_silence(instance, dict(run.tags), flow)
            if silence <= allowed:
                continue
            _terminate(instance, run.run_id)
            reason = (
                f"no event for {silence / 60:.0f} minutes, longer than the flow's max runtime "
                f"and run monitoring's cancel time ({allowed / 60:.0f} minutes): its process is "
                "dead or hung, so the run is stopped, marked failed, and the flow runs again at "
                "its next tick"
            )
            instance.report_run_failed(run, message=reason)
            reaped.append(DeadRun(run, reason))
    return reaped


def build_dead_run_sensor() -> SensorDefinition:
    @sensor(
        name=DEAD_RUN_SENSOR,
        minimum_interval_seconds=60,
        default_status=default_sensor_status(),
        description="Stops and marks failed a flow's run that shows no event for longer than "
        "its max runtime and run monitoring's cancel time (a dead process the run launcher "
        "cannot see); the failure alert follows.",
    )
    def _dead_runs(context: SensorEvaluationContext) -> SkipReason:
        # Marked failed, each run gets its one Slack alert from the failure sensor, which
        # sees runs without a code location (the `dagster` CLI's) too.
        reaped = reap_dead_runs(context.instance, datetime.now(UTC))
        for dead in reaped:
            context.log.warning(f"marked failed: {dead}")
        return SkipReason(
            "marked failed: " + "; ".join(map(str, reaped)) if reaped else "no dead run"
        )

    return _dead_runs


# -- run failure alerts ------------------------------------------------------------------


def step_error(event: DagsterEvent) -> str:
    """`step: message` of a step failure: the Failure's description, else the root cause."""
    data = event.step_failure_data
    if data.user_failure_data and data.user_failure_data.description:
        return f"{event.step_key}: {data.user_failure_data.description}"
    error = data.error
    while error is not None and error.cause is not None:
        error = error.cause
    return f"{event.step_key}: {error.message.strip() if error else 'unknown error'}"


def failure_text(
    flow: str, run_id: str, job_name: str, errors: list[str], run_url: str | None
) -> str:
    """The Slack message: which flow, which run, what went wrong, and where to look."""
    error = "\n".join(errors)
    if len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 1] + "…"
    lines = [
        f":rotating_light: Tracking run failed — flow *{flow}*",
        f"run `{run_id}` (job {job_name})",
        f"error: {error}",
    ]
    if run_url:
        lines.append(f"<{run_url}|Open the run in Dagster>")
    return redact("\n".join(lines))


def post_failure(
    slack: OrdertrackSlackResource, effects: EffectsSettings, run: DagsterRun, errors: list[str]
) -> None:
    """Post a failed run to the alerts channel (`failure_text`)."""
    channel = effects.alerts_channel
    if not channel:
        raise ValueError("TRACKING_ALERTS_SLACK_CHANNEL is not set: failures cannot be posted")
    text = failure_text(
        flow=run.tags.get(FLOW_TAG) or run.tags.get(PARTITION_TAG) or "(none)",
        run_id=run.run_id,
        job_name=run.job_name,
        errors=errors,
        run_url=effects.run_url(run.run_id),
    )
    client = slack.get_client()
    client.retry_handlers.append(ServerErrorRetryHandler(max_retry_count=2))
    client.chat_postMessage(channel=channel, text=text)


def build_failure_sensor() -> SensorDefinition:
    # Runs started by the `dagster` CLI (or in process) have no code location behind them, so
    # a sensor watching only its own location never sees them: it watches all, and keeps
    # the runs of this location's jobs (the CLI's runs included, by their job's name).
    @run_failure_sensor(
        name=FAILURE_SENSOR,
        default_status=default_sensor_status(),
        monitor_all_code_locations=True,
        description="Posts every failed run of this code location's jobs to Slack once, "
        "whatever launched it (schedule, sensor, UI, CLI) "
        "(TRACKING_ALERTS_SLACK_CHANNEL), linked when DAGSTER_WEBSERVER_URL is set.",
    )
    def _failure_alert(
        context: RunFailureSensorContext, slack: OrdertrackSlackResource, effects: EffectsSettings
    ) -> None:
        repository = context.repository_def
        if repository is not None and not repository.has_job(context.dagster_run.job_name):
            return  # another code location's job
        errors = [step_error(event) for event in context.get_step_failure_events()]
        post_failure(
            slack,
            effects,
            context.dagster_run,
            errors or [context.failure_event.message or "the run failed"],
        )

    return _failure_alert


#: Dagster's name for the sensor evaluating automation conditions; defining it here (rather
#: than letting Dagster add it, stopped) is what starts it by default.
AUTOMATION_SENSOR = "default_automation_condition_sensor"


def build_automation_sensor() -> AutomationConditionSensorDefinition:
    """Evaluates every asset's automation condition (the analytics models'): running by
    default in every environment, unlike the other sensors, because what it launches only
    reads the stored history and writes the models' own tables: no courier, no message."""
    return AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=AssetSelection.all(),
        default_status=DefaultSensorStatus.RUNNING,
        description="Refreshes the analytics models when their automation conditions say "
        "they are stale (after tracking writes, or on their cron).",
    )


def build_sensors() -> list[SensorDefinition]:
    """The sensors (default status read from ENV now)."""
    return [
        build_startup_sensor(),
        build_drain_sensor(),
        build_effects_sensor(),
        build_effects_catch_up_sensor(),
        build_dead_run_sensor(),
        build_failure_sensor(),
        build_automation_sensor(),
    ]


SENSORS = build_sensors()
