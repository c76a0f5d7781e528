"""The ops jobs of the UI, run against the local servers: each changes only what its config
names and says in the run's metadata what was asked and what changed."""

from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance

from ordertrack_dagster.definitions import build_definitions
from ordertrack_dagster.effects.outbox import OUTBOX_COLLECTION
from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.markers import Event
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.tracking.selection import ChosenOrders, SelectionPolicy, build_query
from ordertrack_dagster_tests.helpers import orders_by_id, seed_orders

FLOW = "delhivery_b2c"


def _dead(db, _id: str, flow: str, kind: str, hours_ago: float) -> None:
    now = datetime.now(UTC)
    db[OUTBOX_COLLECTION].insert_one(
        {
            "_id": _id,
            "flow": flow,
            "kind": kind,
            "order_id": f"order-{_id}",
            "state": "dead",
            "failures": 9,
            "first_failure_at": now - timedelta(hours=hours_ago + 72),
            "dead_at": now - timedelta(hours=hours_ago),
            "next_attempt_at": now - timedelta(hours=hours_ago),
            "last_error": "HTTP 503",
        }
    )


def _output_metadata(result, node: str) -> dict:
    [event] = [e for e in result.all_node_events if e.is_successful_output]
    assert event.node_name == node
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def test_clear_courier_pause_records_what_it_was_asked_and_cleared(db, stack_env):
    state = SharedState(db)
    state.pause("velocity", datetime.now(UTC) + timedelta(minutes=30), "429")
    defs = build_definitions(stack_env)
    result = defs.get_job_def("clear_courier_pause_job").execute_in_process(
        run_config={"ops": {"clear_courier_pause": {"config": {"scopes": []}}}},
        resources={"mongo": defs.resources["mongo"]},
    )
    assert result.success and state.paused_until("velocity") is None
    metadata = _output_metadata(result, "clear_courier_pause")
    assert metadata == {"asked_scopes": [], "cleared": ["velocity"], "cleared_count": 1}


def test_requeue_dead_letters_by_flow_effect_and_age(db, stack_env):
    _dead(db, "recent-crm", "shiprocket", Event.CRM_RTO.value, hours_ago=2)
    _dead(db, "recent-other-flow", "velocity", Event.CRM_RTO.value, hours_ago=2)
    _dead(db, "recent-slack", "shiprocket", Event.SLACK_LOST_DESTROY.value, hours_ago=2)
    _dead(db, "old-crm", "shiprocket", Event.CRM_RTO.value, hours_ago=50)
    defs = build_definitions(stack_env)
    job = defs.get_job_def("requeue_dead_letters_job")
    asked = {"flows": ["shiprocket"], "effects": ["crm_rto_webhooks"], "given_up_within_hours": 24}
    result = job.execute_in_process(
        run_config={"ops": {"requeue_dead_letters": {"config": asked}}},
        resources={name: defs.resources[name] for name in ("mongo", "effects")},
    )
    assert result.success
    states = {doc["_id"]: doc for doc in db[OUTBOX_COLLECTION].find()}
    assert {_id for _id, doc in states.items() if doc["state"] == "pending"} == {"recent-crm"}
    assert states["recent-crm"]["failures"] == 0 and "first_failure_at" not in states["recent-crm"]
    metadata = _output_metadata(result, "requeue_dead_letters")
    assert metadata["asked"] == {**asked, "given_up_before_hours": None}
    assert (metadata["matched"], metadata["requeued"]) == (1, 1)
    assert metadata["per_flow_and_kind"] == {f"shiprocket/{Event.CRM_RTO.value}": 1}
    assert [d["id"] for d in metadata["requeued_deliveries"]] == ["recent-crm"]


def test_requeue_refuses_an_unknown_effect_before_changing_anything(db, stack_env):
    _dead(db, "dead", "shiprocket", Event.CRM_RTO.value, hours_ago=2)
    defs = build_definitions(stack_env)
    result = defs.get_job_def("requeue_dead_letters_job").execute_in_process(
        run_config={"ops": {"requeue_dead_letters": {"config": {"effects": ["crm"]}}}},
        resources={name: defs.resources[name] for name in ("mongo", "effects")},
        raise_on_error=False,
    )
    assert not result.success
    assert db[OUTBOX_COLLECTION].find_one({"_id": "dead"})["state"] == "dead"


def test_a_repoll_adds_the_chosen_orders_to_the_flows_own_selection():
    """The flow's filter stays (only orders it tracks); ids match as the shop stored them
    (text or number), keys in the flow's own field (the LR number for B2B)."""
    chosen = ChosenOrders(order_ids=("1001", "OT-7"), tracking_keys=("LR9",))
    flow = get_flow("delhivery_b2b")
    now, policy = datetime.now(UTC), SelectionPolicy((4,), 31)
    plain, query = build_query(flow, policy, now), build_query(flow, policy, now, chosen)
    assert query.filter["$and"][:-1] == plain.filter["$and"]
    assert query.filter["$and"][-1] == {
        "$or": [
            {"order_id": {"$in": ["1001", "OT-7", 1001]}},
            {"delhivery_lr_number": {"$in": ["LR9"]}},
        ]
    }
    assert not ChosenOrders()


@pytest.mark.slow
def test_repoll_chosen_orders_by_id_or_awb_through_the_flow(stack, db, stack_env):
    by_id, by_awb, untouched = seed_orders(
        db, stack.simulator, FLOW, ["delivered", "in_transit", "in_transit"]
    )
    defs = build_definitions(stack_env)
    chosen = {"order_ids": [by_id.order_id], "tracking_keys": [by_awb.tracking_key, "NOPE1"]}
    with DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("repoll_orders_job").execute_in_process(
            run_config={"ops": {"pending_orders": {"config": chosen}}},
            partition_key=FLOW,
            instance=instance,
        )
    assert result.success
    orders = orders_by_id(db, [by_id, by_awb, untouched])
    assert orders[by_id.order_id]["courier_status"] == "dl-delivered"
    assert orders[by_awb.order_id]["courier_status"] == "ud-in_transit"
    assert "last_tracking_time" not in orders[untouched.order_id]
    asked = result.asset_materializations_for_node("pending_orders")[0].metadata
    assert asked["selected"].value == 2
    assert asked["repoll_order_ids"].value == [by_id.order_id]
    assert asked["repoll_tracking_keys"].value == [by_awb.tracking_key, "NOPE1"]
    assert asked["repoll_not_tracked"].value == ["NOPE1"]
    changed = result.asset_materializations_for_node("order_status_writes")[0].metadata
    assert changed["updated"].value == 2
