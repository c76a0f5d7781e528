"""Every flow end to end: `group:tracking` materialized for its partition against the stack."""

from datetime import datetime, timedelta

import pytest

from ordertrack_dagster import flows
from ordertrack_dagster.devstack.seed import seed_reference_data
from ordertrack_dagster.flows import FLOWS, RateBudget, get_flow
from ordertrack_dagster_tests.helpers import (
    materialize_flow,
    orders_by_id,
    seed_orders,
    stored_frame,
)

pytestmark = pytest.mark.slow

LOGIN_FLOWS = {"delhivery_b2b", "shiprocket", "velocity"}
STEPS = ["in_transit", "delivered", "manifested", None]  # None: unknown to the courier

#: courier_status written for the in_transit, delivered and manifested answers
COURIER_STATUS = {
    "delhivery_b2c": ("ud-in_transit", "dl-delivered", "ud-manifested"),
    "delhivery_b2b": ("IN_TRANSIT", "DELIVERED", "MANIFESTED"),
    "shiprocket": ("In Transit", "Delivered", "Out For Pickup"),
    "velocity": ("in_transit", "delivered", "pickup_scheduled"),
    "delhivery_fallback": ("ud-in_transit", "dl-delivered", "ud-manifested"),
}


def _courier_time(stack, flow, key):
    """When the simulator says the shipment reached its current step."""
    at = stack.simulator.shipment(flow, key)["events"][-1]["at"]
    return datetime.fromisoformat(at)


def test_rate_budget_override_is_read_from_the_environment_given():
    flow = get_flow("delhivery_b2c")
    scaled = {"ORDERTRACK_RATE_BUDGET_DELHIVERY_EXPRESS": "70/30"}
    assert flow.rate_budget_in(scaled) == RateBudget(requests=70, window_seconds=30.0)
    assert flow.rate_budget_in({}) == RateBudget(requests=700, window_seconds=300)
    assert get_flow("shiprocket").rate_budget_in(scaled) is None


@pytest.mark.parametrize("flow", list(FLOWS))
def test_flow_end_to_end(flow, stack, stack_env, db, monkeypatch):
    # one worker per order: the fallback's 5 s pause between one worker's calls stays out
    monkeypatch.setenv("FALLBACK_TRACKING_WORKERS", str(len(STEPS)))
    seeded = seed_orders(db, stack.simulator, flow, STEPS)
    moving, delivered, manifested, unknown = seeded
    statuses = {doc["name"]: doc for doc in seed_reference_data(db).statuses.values()}

    result = materialize_flow(flow)
    assert result.success

    orders = orders_by_id(db, seeded)
    expected = {moving: "in transit", delivered: "delivered"}
    for order, status in expected.items():
        doc = orders[order.order_id]
        assert doc["order_status"] == statuses[status]["status_id"]
        assert doc["order_status_map"][-1] == statuses[status]["_id"]
        assert doc["tracking_timestamps"][status.replace(" ", "_")] is not None
        tracking = db["orderTracking"].find_one({"orderId": order.oid})
        assert tracking["currentStatus"] == status
        assert [entry["status"] for entry in tracking["History"]] == [status]
        courier_time = _courier_time(stack, flow, order.tracking_key)
        assert abs(tracking["History"][0]["timeStamp"] - courier_time) < timedelta(seconds=1)
    for order, courier_status in zip(seeded[:3], COURIER_STATUS[flow], strict=True):
        assert orders[order.order_id]["courier_status"] == courier_status
        assert orders[order.order_id]["last_tracking_time"] is not None
    assert orders[manifested.order_id]["order_status"] == statuses["booked"]["status_id"]
    assert db["orderTracking"].find_one({"orderId": manifested.oid}) is None

    lost = orders[unknown.order_id]
    if flow == "delhivery_fallback":  # "Invalid AWB number": read, and tracking stops
        assert lost["being_tracked"] is False
        assert lost["last_tracking_time"] is not None
    else:  # not found: untouched, first in line next time
        assert "last_tracking_time" not in lost and "courier_status" not in lost

    raw = stored_frame(stack, "raw_courier_responses", flow, result.run_id).set_index(
        "tracking_key"
    )
    assert (raw.loc[[o.tracking_key for o in seeded[:3]], "state"] == "answered").all()
    unknown_state = "answered" if flow == "delhivery_fallback" else "not_answered"
    assert raw.loc[unknown.tracking_key, "state"] == unknown_state
    assert set(raw["run_id"]) == {result.run_id}

    updates = stored_frame(stack, "status_updates", flow, result.run_id).set_index("order_id")
    assert updates.loc[moving.order_id, "outcome"] == "mapped"
    assert updates.loc[manifested.order_id, "outcome"] == "no_change"
    unknown_outcome = "no_change" if flow == "delhivery_fallback" else "not_found"
    assert updates.loc[unknown.order_id, "outcome"] == unknown_outcome

    writes = stored_frame(stack, "order_status_writes", flow, result.run_id).set_index("order_id")
    assert writes.loc[delivered.order_id, "action"] == "status_changed"
    assert writes.loc[manifested.order_id, "action"] == "poll_recorded"

    fetched = result.asset_materializations_for_node("raw_courier_responses")[0].metadata
    assert fetched["logins"].value == (1 if flow in LOGIN_FLOWS else 0)


@pytest.fixture
def slow_courier(stack):
    """The session's simulator answering slowly for one test, as a struggling courier does."""
    before = stack.simulator.settings()
    stack.simulator.update_settings(latency_mean_ms=600, latency_p99_ms=1000)
    yield
    stack.simulator.update_settings(
        latency_mean_ms=before["latency_mean_ms"], latency_p99_ms=before["latency_p99_ms"]
    )


def test_a_slow_courier_defers_what_the_time_box_leaves_and_the_rest_is_written(
    stack, stack_env, db, monkeypatch, slow_courier
):
    flow = "delhivery_b2b"  # one LR per request, three workers
    monkeypatch.setattr(flows, "FETCH_SHARE_OF_MAX_RUNTIME", 1.5 / (24 * 60))  # 1.5 s of 24 min
    seeded = seed_orders(db, stack.simulator, flow, ["delivered"] * 15)

    result = materialize_flow(flow)
    assert result.success

    raw = stored_frame(stack, "raw_courier_responses", flow, result.run_id)
    states = raw["state"].value_counts().to_dict()
    assert states.get("answered", 0) >= 3 and states.get("deferred", 0) >= 3, states
    assert sum(states.values()) == len(seeded)
    deferred = raw[raw["state"] == "deferred"]
    assert deferred["error"].str.contains("time for asking").all()
    answered = set(raw.loc[raw["state"] == "answered", "tracking_key"])
    delivered_id = seed_reference_data(db).statuses["delivered"]["status_id"]
    for order in orders_by_id(db, seeded).values():
        written = order["order_status"] == delivered_id
        assert written == (order["delhivery_lr_number"] in answered)
