"""A flow's side effects in their own run (contract §7, "Side effects off the critical path"):
the tracking run writes, the sensor `tracking_effects_runs` starts the flow's effects run,
which sends each message once; retries and markers nobody drained get a catch-up run.

The runs are real (in process, against the stack's servers and one Dagster instance), and
the sensors are evaluated as the daemon evaluates them: against that instance, from their
cursor."""

from datetime import UTC, datetime, timedelta

import pytest
from dagster import (
    DagsterInstance,
    Definitions,
    RunRequest,
    build_sensor_context,
)

from ordertrack_dagster.devstack.stack import SLACK_CHANNELS
from ordertrack_dagster.effects.assets import TABLELESS_EFFECTS
from ordertrack_dagster.effects.outbox import OUTBOX_COLLECTION
from ordertrack_dagster.markers import OUTBOX_FIELD
from ordertrack_dagster.orchestration import SENSORS
from ordertrack_dagster.orchestration.guards import EFFECTS_TAG, FLOW_TAG
from ordertrack_dagster.orchestration.sensors import EFFECTS_CATCH_UP_SENSOR, EFFECTS_SENSOR
from ordertrack_dagster.resources.s3 import SOURCE_RUN_TAG
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.statuses import Canonical
from ordertrack_dagster_tests.effects.support import mentioning, write_markers
from ordertrack_dagster_tests.helpers import load_definitions, seed_orders

pytestmark = pytest.mark.slow

FLOW = "delhivery_b2c"
BY_NAME = {sensor.name: sensor for sensor in SENSORS}
EFFECT_KEYS = {"effects_outbox", "slack_status_alerts", "crm_rto_webhooks"}


def tick(instance: DagsterInstance, defs: Definitions, name: str, cursor: str | None = None):
    """One evaluation of a sensor as the daemon makes it; (run requests, next cursor)."""
    repository = defs.get_repository_def()
    with build_sensor_context(
        instance=instance,
        cursor=cursor,
        repository_name=repository.name,
        repository_def=repository,
        resources={"mongo": defs.resources["mongo"]},
    ) as context:
        result = BY_NAME[name].evaluate_tick(context)
        return result.run_requests, context.cursor


def run_job(instance: DagsterInstance, defs: Definitions, job: str, **kwargs):
    return defs.resolve_job_def(job).execute_in_process(
        partition_key=FLOW, instance=instance, raise_on_error=False, **kwargs
    )


def run_requested(instance: DagsterInstance, defs: Definitions, request: RunRequest):
    """Execute a sensor's request as the run coordinator would launch it."""
    assert request.partition_key == FLOW
    return run_job(
        instance,
        defs,
        "tracking_effects_job",
        tags=request.tags,
        asset_selection=request.asset_selection,
    )


def materialized(instance: DagsterInstance, run_id: str) -> set[str]:
    return {
        key.path[-1]
        for key in instance.get_asset_keys()
        if (event := instance.get_latest_materialization_event(key)) and event.run_id == run_id
    }


def sent(stack, orders) -> tuple[int, int]:
    """(Slack status messages, CRM webhooks) naming the orders."""
    ids = [order.order_id for order in orders]
    slack = mentioning(stack.slack_messages(SLACK_CHANNELS["BOOKING_CANCELED_CHANNEL_ID"]), *ids)
    webhooks = [w for w in stack.crm_webhooks() if w["body"].get("order_id") in ids]
    return len(slack), len(webhooks)


def test_a_tracking_run_that_wrote_is_followed_by_its_effects_run_which_sends_once(
    stack, stack_env, db, instance
):
    """The tracking-only run writes the statuses and sends nothing; the sensor requests one
    effects run for it (own tag, pinned to that run); that run sends each message once and
    reports that tracking run; later ticks and a second effects run send nothing again."""
    defs = load_definitions()
    _, cursor = tick(instance, defs, EFFECTS_SENSOR)  # the first tick only sets the cursor
    orders = seed_orders(
        db, stack.simulator, FLOW, ["cancelled", "rto_initiated", "in_transit"], status="in transit"
    )

    tracking = run_job(instance, defs, "tracking_only_job")
    assert tracking.success
    assert materialized(instance, tracking.run_id) == {
        "pending_orders",
        "raw_courier_responses",
        "status_updates",
        "order_status_writes",
    }
    assert db["orders"].count_documents({OUTBOX_FIELD: {"$exists": True}}) == 2
    assert sent(stack, orders) == (0, 0)  # off the critical path: nothing sent yet

    [request], cursor = tick(instance, defs, EFFECTS_SENSOR, cursor)
    assert request.run_key == f"effects:{tracking.run_id}"
    assert request.tags[EFFECTS_TAG] == FLOW and FLOW_TAG not in request.tags
    assert request.tags[SOURCE_RUN_TAG] == tracking.run_id
    assert tick(instance, defs, EFFECTS_SENSOR, cursor)[0] == []  # once per tracking run

    effects = run_requested(instance, defs, request)
    assert effects.success
    assert materialized(instance, effects.run_id) >= EFFECT_KEYS
    assert sent(stack, orders) == (1, 1)
    assert db["orders"].count_documents({OUTBOX_FIELD: {"$exists": True}}) == 0
    # its reports are the tracking run's: the query log and the email name that run
    reports = {doc["_id"] for doc in db[OUTBOX_COLLECTION].find({"run_id": tracking.run_id})}
    assert {f"query_log:{FLOW}:{tracking.run_id}", f"email_summary:{FLOW}:{tracking.run_id}"} <= (
        reports
    )
    assert effects.run_id not in {doc.get("run_id") for doc in db[OUTBOX_COLLECTION].find()}

    assert run_requested(instance, defs, request).success  # again (a re-run): nothing new
    assert sent(stack, orders) == (1, 1)


def test_what_a_failed_tracking_run_wrote_goes_out_once_with_the_next_effects_run(
    stack, stack_env, db, instance
):
    """A tracking run that failed after its write is not followed, but its markers stay on
    the orders: the effects run after the flow's next successful run sends them with its
    own, each once, and running it again sends nothing twice."""
    defs = load_definitions()
    _, cursor = tick(instance, defs, EFFECTS_SENSOR)
    [left] = write_markers(db, [Canonical.LOST])  # as the failed run's write left it
    [cancelled] = seed_orders(db, stack.simulator, FLOW, ["cancelled"], status="in transit")
    assert run_job(instance, defs, "tracking_only_job").success
    [request], _ = tick(instance, defs, EFFECTS_SENSOR, cursor)

    for _ in range(2):  # the effects run, then the same again
        assert run_requested(instance, defs, request).success
        lost = stack.slack_messages(SLACK_CHANNELS["LOST_DESTROY_SLACK_CHANNEL_ID"])
        assert len(mentioning(lost, left["order_id"])) == 1
        assert sent(stack, [cancelled]) == (1, 0)
    assert db["orders"].count_documents({OUTBOX_FIELD: {"$exists": True}}) == 0


def test_each_tracking_run_is_reported_by_its_own_effects_run(stack, stack_env, db, instance):
    """Two tracking runs finish before the first effects run starts (it queued): each effects
    run loads the tables of the run it follows, not the flow's latest."""
    defs = load_definitions()
    _, cursor = tick(instance, defs, EFFECTS_SENSOR)
    seed_orders(db, stack.simulator, FLOW, ["in_transit", "delivered"], status="in transit")
    first = run_job(instance, defs, "tracking_only_job")
    db["orders"].update_many({}, {"$set": {"order_status": -1}})  # no longer selectable
    seed_orders(db, stack.simulator, FLOW, ["in_transit"], status="in transit")
    second = run_job(instance, defs, "tracking_only_job")
    assert first.success and second.success
    requests = []
    for _ in range(3):  # a tick requests at most one run (Dagster's run status sensors)
        requested, cursor = tick(instance, defs, EFFECTS_SENSOR, cursor)
        requests += requested
    assert [r.tags[SOURCE_RUN_TAG] for r in requests] == [first.run_id, second.run_id]

    for request in requests:
        assert run_requested(instance, defs, request).success
    # each email summary counts its own run's tables (loaded through the IO manager)
    subjects = {
        run.run_id: [mail["Subject"] for mail in stack.mailbox() if run.run_id in str(mail)]
        for run in (first, second)
    }
    assert subjects == {
        first.run_id: ["ordertrack Delhivery B2C: 1 updated, 0 failed of 2 selected"],
        second.run_id: ["ordertrack Delhivery B2C: 0 updated, 0 failed of 1 selected"],
    }


def test_no_effects_run_after_a_failed_tracking_run_one_that_selected_nothing_or_a_whole_flow(
    stack, stack_env, db, instance
):
    """A run that selected no order has nothing to send or report; a failed run is not
    followed (what it wrote waits for the next effects run); a whole-flow run (tracking_job:
    by hand, the demo) sent its own side effects."""
    defs = load_definitions()
    _, cursor = tick(instance, defs, EFFECTS_SENSOR)
    assert run_job(instance, defs, "tracking_only_job").success  # nothing is due here
    seed_orders(db, stack.simulator, FLOW, ["in_transit"], status="in transit")
    courier = SharedState(db)
    courier.pause("delhivery_express", datetime.now(UTC) + timedelta(minutes=10))
    assert not run_job(instance, defs, "tracking_only_job").success  # refused: paused
    courier.clear_pause("delhivery_express")
    assert run_job(instance, defs, "tracking_job").success
    assert tick(instance, defs, EFFECTS_SENSOR, cursor)[0] == []


def test_markers_a_failed_tracking_run_left_and_due_retries_get_a_catch_up_run(
    stack, stack_env, db, instance
):
    """A tracking run that died after its write leaves its markers: with no successful run to
    follow, the catch-up sensor starts the flow's effects run, which sends them once; it
    starts no other within the flow's schedule interval, even with a retry due."""
    defs = load_definitions()
    assert tick(instance, defs, EFFECTS_CATCH_UP_SENSOR)[0] == []  # nothing waits
    [order] = write_markers(db, [Canonical.BOOKING_CANCELLED])

    [request], _ = tick(instance, defs, EFFECTS_CATCH_UP_SENSOR)
    assert request.tags[EFFECTS_TAG] == FLOW and request.run_key.startswith("effects-catch-up:")
    assert SOURCE_RUN_TAG not in request.tags  # no tracking run wrote: none to report
    assert set(request.asset_selection or ()) == set(TABLELESS_EFFECTS)
    assert run_requested(instance, defs, request).success
    channel = SLACK_CHANNELS["BOOKING_CANCELED_CHANNEL_ID"]
    assert len(mentioning(stack.slack_messages(channel), order["order_id"])) == 1
    assert db["orders"].count_documents({OUTBOX_FIELD: {"$exists": True}}) == 0

    db[OUTBOX_COLLECTION].update_many({}, {"$set": {"state": "pending"}})  # due again
    assert tick(instance, defs, EFFECTS_CATCH_UP_SENSOR)[0] == []  # one ran this interval
