"""The drain sensor (contract §1): a flow whose last run left orders due gets its next run as
soon as the last one is over, not at the next tick."""

import time
from datetime import UTC, datetime, timedelta

from dagster import AssetMaterialization, DagsterRunStatus, build_sensor_context

from ordertrack_dagster.definitions import defs
from ordertrack_dagster.flows import RateBudget, get_flow
from ordertrack_dagster.orchestration import SENSORS
from ordertrack_dagster.orchestration.guards import FLOW_TAG, run_tags
from ordertrack_dagster.orchestration.sensors import DRAIN_SENSOR
from ordertrack_dagster.resources.budget_window import bucket_width
from ordertrack_dagster.resources.state import STATE_COLLECTION, SharedState

SENSOR = next(sensor for sensor in SENSORS if sensor.name == DRAIN_SENSOR)
REPOSITORY = defs.get_repository_def()


def evaluate(instance, mongo):
    with build_sensor_context(
        instance=instance, resources={"mongo": mongo}, repository_def=REPOSITORY
    ) as context:
        return SENSOR.evaluate_tick(context)


def wrote(instance, flow, **figures):
    instance.report_runless_asset_event(
        AssetMaterialization("order_status_writes", partition=flow, metadata=figures)
    )


def test_a_run_that_hit_its_cap_or_deferred_for_the_budget_is_followed_at_once(instance, mongo):
    wrote(instance, "delhivery_fallback", selected=get_flow("delhivery_fallback").cap, deferred=0)
    wrote(instance, "delhivery_b2c", selected=36_000, deferred=2_000)
    wrote(instance, "velocity", selected=120, deferred=0)  # all due orders fitted: done
    wrote(instance, "shiprocket", selected=50, deferred=50)  # asked nothing: the tick retries
    result = evaluate(instance, mongo)
    requested = {request.partition_key: request for request in result.run_requests}
    assert set(requested) == {"delhivery_fallback", "delhivery_b2c"}
    assert SENSOR.job_name == "tracking_only_job"  # its effects follow in their own run
    for flow, request in requested.items():
        assert run_tags(get_flow(flow)).items() <= request.tags.items()  # max runtime too
        assert request.run_key.startswith("drain:")


def test_a_run_the_courier_did_not_answer_is_left_to_the_schedule(instance, mongo):
    """An outage or a cap of unknown keys must not turn the drain into a loop of failing runs."""
    cap = get_flow("shiprocket").cap
    wrote(instance, "shiprocket", selected=cap, deferred=0, failed=cap - 10, not_found=10)
    wrote(instance, "velocity", selected=get_flow("velocity").cap, failed=1, not_found=0)
    result = evaluate(instance, mongo)
    assert [request.partition_key for request in result.run_requests] == ["velocity"]


def test_a_running_or_paused_flow_is_not_drained(instance, mongo, db, add_run):
    wrote(instance, "delhivery_b2b", selected=480, deferred=0)
    wrote(instance, "delhivery_b2c", selected=36_000, deferred=0)
    add_run(DagsterRunStatus.STARTED, {FLOW_TAG: "delhivery_b2b"})
    SharedState(db).pause("delhivery_express", datetime.now(UTC) + timedelta(minutes=8))
    result = evaluate(instance, mongo)
    assert result.run_requests == []


def _budget_used_up(db, scope: str, budget: RateBudget, counted_at: float) -> None:
    """Every request of the scope's window counted in the bucket of `counted_at`."""
    start = int(counted_at // bucket_width(budget) * bucket_width(budget))
    db[STATE_COLLECTION].insert_one(
        {"_id": f"budget:{scope}", "buckets": {str(start): budget.requests}}
    )


def test_the_next_run_starts_when_its_budget_frees_not_when_the_last_run_ends(instance, mongo, db):
    """A run started while the window is used up would only wait for it: the drain waits
    instead, and starts the run once the budget frees within the sensor's lead."""
    b2c = get_flow("delhivery_b2c")
    wrote(instance, "delhivery_b2c", selected=b2c.cap, deferred=0)
    wrote(instance, "delhivery_b2b", selected=get_flow("delhivery_b2b").cap, deferred=0)
    _budget_used_up(db, b2c.budget_scope, b2c.rate_budget, time.time())
    result = evaluate(instance, mongo)
    assert [request.partition_key for request in result.run_requests] == ["delhivery_b2b"]

    db[STATE_COLLECTION].delete_many({})  # the same use, leaving the window in 10 to 20 s
    window = b2c.rate_budget.window_seconds
    _budget_used_up(db, b2c.budget_scope, b2c.rate_budget, time.time() - window + 10)
    result = evaluate(instance, mongo)
    assert {request.partition_key for request in result.run_requests} == {
        "delhivery_b2c",
        "delhivery_b2b",
    }
