"""Courier pauses across processes (contract §4) and the Slack alert on a failed run."""

from datetime import UTC, datetime, timedelta

from dagster import (
    DagsterEventType,
    asset,
    build_run_status_sensor_context,
    build_sensor_context,
    materialize,
)
from dagster._grpc.impl import get_partition_tags

from ordertrack_dagster.flows import FLOWS, MAX_RUNTIME_TAG, max_runtime
from ordertrack_dagster.orchestration import SENSORS
from ordertrack_dagster.orchestration.sensors import FAILURE_SENSOR, failure_text, step_error
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster_tests.helpers import (
    load_definitions,
    materialize_flow,
    orders_by_id,
    seed_orders,
    simulator_counts,
)

SENSOR = next(sensor for sensor in SENSORS if sensor.name == FAILURE_SENSOR)
FORCE = {"ops": {"raw_courier_responses": {"config": {"force": True}}}}


def pause_delhivery(db, minutes=10):
    resume_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=minutes)
    SharedState(db).pause("delhivery_express", resume_at)
    return resume_at


def test_a_manual_run_during_a_pause_fails_fast_and_is_posted_to_slack(
    stack, stack_env, db, instance, monkeypatch
):
    monkeypatch.setenv("DAGSTER_WEBSERVER_URL", "http://dagster.test:3000/")
    [order] = seed_orders(db, stack.simulator, "delhivery_b2c", ["in_transit"])
    resume_at = pause_delhivery(db)
    asked_before = simulator_counts(stack.simulator, "delhivery_b2c")["requests"]
    defs = load_definitions()

    # as the UI launches it: the flow's partition, no schedule tag
    result = defs.resolve_job_def("tracking_job").execute_in_process(
        partition_key="delhivery_b2c", instance=instance, raise_on_error=False
    )

    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert failure.step_key == "raw_courier_responses"
    reason = failure.step_failure_data.user_failure_data.description
    assert f"{resume_at:%Y-%m-%d %H:%M:%S} UTC" in reason and "force: true" in reason
    assert simulator_counts(stack.simulator, "delhivery_b2c")["requests"] == asked_before
    assert "last_tracking_time" not in orders_by_id(db, [order])[order.order_id]

    run = instance.get_run_by_id(result.run_id)
    [event] = instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_FAILURE)
    with build_run_status_sensor_context(
        sensor_name=FAILURE_SENSOR,
        dagster_event=event.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
        resources={"slack": defs.resources["slack"], "effects": defs.resources["effects"]},
    ) as status_context:
        SENSOR(status_context.for_run_failure())

    channel = stack_env["TRACKING_ALERTS_SLACK_CHANNEL"]
    [message] = [m for m in stack.slack_messages(channel) if result.run_id in m["text"]]
    text = message["text"]
    assert "flow *delhivery_b2c*" in text
    assert "raw_courier_responses: Delhivery B2C is paused by a courier rate limit" in text
    assert f"<http://dagster.test:3000/runs/{result.run_id}|" in text
    assert stack_env["SLACK_TOKEN"] not in text


def _tick_failure_sensor(instance, defs, cursor: str | None) -> str | None:
    """One evaluation of the failure sensor as the daemon makes it: against the instance,
    with this location's repository, from the cursor of the previous tick; the next cursor."""
    repository = defs.get_repository_def()
    context = build_sensor_context(
        instance=instance,
        cursor=cursor,
        repository_name=repository.name,  # the daemon names the sensor's repository
        repository_def=repository,
        resources={"slack": defs.resources["slack"], "effects": defs.resources["effects"]},
    )
    SENSOR.evaluate_tick(context)
    return context.cursor


def test_a_failed_cli_run_reaches_slack_exactly_once(stack, stack_env, db, instance):
    """FAILED-CLI-RUN: a run with no code location behind it (the `dagster` CLI's, like an
    in-process run) fails; the failure sensor's ticks post it once, and only once."""
    defs = load_definitions()
    cursor = _tick_failure_sensor(instance, defs, None)  # the first tick only sets the cursor
    seed_orders(db, stack.simulator, "delhivery_b2c", ["in_transit"])
    pause_delhivery(db)
    result = defs.resolve_job_def("tracking_job").execute_in_process(
        partition_key="delhivery_b2c", instance=instance, raise_on_error=False
    )
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run.remote_job_origin is None  # as the CLI's
    assert run.tags[MAX_RUNTIME_TAG] == str(24 * 60)  # launched without tags: the flow's own

    for _ in range(3):  # later ticks find nothing new
        cursor = _tick_failure_sensor(instance, defs, cursor)
    channel = stack_env["TRACKING_ALERTS_SLACK_CHANNEL"]
    [message] = [m for m in stack.slack_messages(channel) if result.run_id in m["text"]]
    assert "flow *delhivery_b2c*" in message["text"]


def test_a_run_launched_without_tags_carries_its_flows_max_runtime(instance):
    """RUN-MAX-RUNTIME: the tags the code server gives the UI for a partition of tracking_job
    (Launchpad, backfills) and those of `dagster asset materialize --partition` (the implicit
    asset job) carry the flow's own max runtime, never the instance default (1,800 s, shorter
    than the fallback flow's fetch time box)."""
    defs = load_definitions()
    repository = defs.get_repository_def()
    asset_job = defs.resolve_implicit_global_asset_job_def()
    for key, flow in FLOWS.items():
        expected = str(int(max_runtime(flow).total_seconds()))
        assert get_partition_tags(repository, "tracking_job", key).tags[MAX_RUNTIME_TAG] == expected
        cli_tags = asset_job.get_tags_for_partition_key(key, selected_asset_keys=None)
        assert cli_tags[MAX_RUNTIME_TAG] == expected, key
    fallback = asset_job.get_tags_for_partition_key("delhivery_fallback", selected_asset_keys=None)
    assert fallback[MAX_RUNTIME_TAG] == str(6 * 3600)


def test_a_forced_run_asks_the_courier_despite_the_pause(stack, stack_env, db):
    [order] = seed_orders(db, stack.simulator, "delhivery_b2c", ["in_transit"])
    resume_at = pause_delhivery(db)

    assert materialize_flow("delhivery_b2c", run_config=FORCE).success

    stored = orders_by_id(db, [order])[order.order_id]
    assert stored["courier_status"] == "ud-in_transit"
    assert stored["last_tracking_time"] > datetime.now(UTC) - timedelta(minutes=1)
    # forcing one run does not lift the pause for the schedules
    assert SharedState(db).paused_until("delhivery_express") == resume_at


def test_failure_text_names_flow_run_and_error_and_hides_secrets(monkeypatch):
    monkeypatch.setenv("SHIPROCKET_PASSWORD", "s3cret-pass")
    monkeypatch.setenv("MONGODB_URI", "mongodb://tracker:mongo-pw@db.internal:27017/")
    text = failure_text(
        flow="shiprocket",
        run_id="r-123",
        job_name="tracking_job",
        errors=["raw_courier_responses: login as s3cret-pass refused; mongo-pw", "x" * 2000],
        run_url=None,
    )
    assert "flow *shiprocket*" in text and "`r-123`" in text
    assert "raw_courier_responses: login as *** refused; ***" in text
    assert "s3cret-pass" not in text and "mongo-pw" not in text
    assert "/runs/" not in text  # no link without DAGSTER_WEBSERVER_URL
    assert len(text) < 800


def test_a_plain_exception_is_reported_by_its_root_cause():
    @asset
    def pending_orders():
        raise ValueError("MongoDB said no")

    result = materialize([pending_orders], raise_on_error=False)
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert step_error(failure) == "pending_orders: ValueError: MongoDB said no"
