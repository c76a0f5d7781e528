"""A tracking key (AWB or LR) several live orders hold (CUR-DUP-ACROSS-ORDERS): its answer
reaches exactly one order, the one it names, or none; never the wrong customer, even when
the orders are selected by different runs."""

import json
from datetime import UTC, datetime

import pandas as pd
import pytest
from bson import ObjectId

from ordertrack_dagster.couriers import delhivery
from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.markers import OUTBOX_FIELD
from ordertrack_dagster.records import FetchState, Outcome
from ordertrack_dagster.statuses import Canonical
from ordertrack_dagster.tracking.mapping import interpret_answers
from ordertrack_dagster.tracking.selection import (
    SelectionPolicy,
    shared_key_holders,
    shared_keys_pipeline,
)
from ordertrack_dagster_tests.helpers import materialize_flow, seed_orders, stored_frame

AWB = "AWBSHARED0001"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _express_answer(reference_no: str) -> str:
    """One shipment of Delhivery's express answer, as the fetch stores it per waybill."""
    status = {"Status": "RTO", "StatusType": "DL", "StatusDateTime": "2026-11-30T10:00:00"}
    return json.dumps({"AWB": AWB, "ReferenceNo": reference_no, "Status": status})


def _map(order_ids: list[str], reference_no: str, holders=None) -> pd.DataFrame:
    """The Delhivery B2C mapping of one answer for `AWB`, held by the selected `order_ids`."""
    raw = pd.DataFrame(
        [{"tracking_key": AWB, "state": FetchState.ANSWERED.value, "raw": _express_answer(
            reference_no), "error": None}]
    )  # fmt: skip
    orders = pd.DataFrame(
        {
            "order_oid": [str(ObjectId()) for _ in order_ids],
            "order_id": order_ids,
            "tracking_key": [AWB] * len(order_ids),
            "order_status": [None] * len(order_ids),
            "booked_at": [None] * len(order_ids),
        }
    )
    rows = interpret_answers(orders, raw, delhivery.interpret_express, NOW, holders)
    return rows.set_index("order_id")


def test_a_reference_that_fits_two_holders_reaches_none_of_them():
    """`1001` and `1001-C` both fit ReferenceNo 1001 (a rebooking suffix): nobody can say
    which order the RTO is for, so neither gets it; the third holder does not either."""
    rows = _map(["1001", "1001-C", "2002"], "1001")
    assert set(rows["outcome"]) == {Outcome.FAILED.value}
    assert rows["status"].isna().all()
    for alert in rows["alert"]:
        assert alert.startswith(f"shared tracking key: {AWB} is held by live orders")
        assert "fits orders 1001, 1001-C: applied to none of them" in alert


def test_a_reference_that_fits_one_holder_reaches_that_one_only():
    rows = _map(["1001", "2002", "3003"], "1001")
    assert rows.loc["1001", "outcome"] == Outcome.MAPPED.value
    assert rows.loc["1001", "status"] == Canonical.RTO.value
    for other in ("2002", "3003"):
        assert rows.loc[other, "outcome"] == Outcome.FAILED.value  # untouched, not polled
        assert "its answer names order 1001, so it was not applied" in rows.loc[other, "alert"]


def test_a_holder_outside_the_selection_still_counts():
    """Only `1001-C` is selected (its pair is in another run's share of the backlog)."""
    rows = _map(["1001-C"], "1001", holders={AWB: ["1001", "1001-C"]})
    assert rows.loc["1001-C", "outcome"] == Outcome.FAILED.value
    assert "held by live orders 1001, 1001-C" in rows.loc["1001-C", "alert"]


def _clauses_on(value, field: str):
    """Every clause on `field` anywhere in a query or pipeline."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == field:
                yield item
            yield from _clauses_on(item, field)
    elif isinstance(value, list):
        for item in value:
            yield from _clauses_on(item, field)


@pytest.mark.parametrize("flow", ["delhivery_b2c", "delhivery_b2b", "delhivery_fallback"])
def test_the_shared_keys_are_one_group_of_the_live_orders_with_no_list_of_keys(flow):
    """A `$in` of the answered keys costs keys x orders on the embedded database, so the
    query names no key: it groups every live order by the flow's key field."""
    field = get_flow(flow).tracking_key_field
    policy = SelectionPolicy(tracking_status_ids=(4, 5), buffer_days=31)
    pipeline = shared_keys_pipeline(get_flow(flow), policy, NOW)
    assert [next(iter(stage)) for stage in pipeline] == ["$match", "$group", "$match"]
    assert pipeline[1]["$group"]["_id"] == f"${field}"
    assert pipeline[2] == {"$match": {"n": {"$gt": 1}}}
    assert list(_clauses_on(pipeline, field)) == [{"$exists": True, "$nin": [None, ""]}]


def test_the_shared_keys_are_those_several_live_orders_of_any_flow_hold(stack, stack_env, db):
    """Held by two flows' orders: shared. Held by an order no longer live, by an LR order (asked
    by its LR) or empty: not."""
    express, fallback = get_flow("delhivery_b2c"), get_flow("delhivery_fallback")
    first, second, stopped, *blanks = seed_orders(db, stack.simulator, express.key, [None] * 5)
    [other_flows] = seed_orders(db, stack.simulator, fallback.key, [None])
    [lr_order] = seed_orders(db, stack.simulator, "delhivery_b2b", [None])
    shared = {"awb_number": first.tracking_key}
    for order in (second, other_flows, lr_order):
        db["orders"].update_one({"_id": order.oid}, {"$set": shared})
    db["orders"].update_one({"_id": stopped.oid}, {"$set": {**shared, "being_tracked": False}})
    for order in blanks:
        db["orders"].update_one({"_id": order.oid}, {"$set": {"awb_number": ""}})

    now = datetime.now(UTC)
    holders = {key: sorted(ids) for key, ids in shared_key_holders(db, express, now).items()}
    expected = sorted([first.order_id, second.order_id, other_flows.order_id])
    assert holders == {first.tracking_key: expected}
    assert shared_key_holders(db, get_flow("delhivery_b2b"), now) == {}


@pytest.mark.slow
def test_a_pair_split_across_two_capped_runs_gets_no_status(stack, db, stack_env):
    """B2B's cap is 480: with a longer backlog one holder of a shared LR is selected by one
    run and the other by the next. Neither run may give its holder the answer (here an RTO,
    which would send the CRM's cancel webhook for the wrong customer)."""
    flow = get_flow("delhivery_b2b")
    # the backlog ahead of the pair: keys not fit to ask (no courier request), selected all
    # the same, so the cap's last place goes to the first holder and the second waits
    [template] = seed_orders(db, stack.simulator, flow.key, [None])
    odd = {"delhivery_lr_number": "not an lr"}
    db["orders"].update_one({"_id": template.oid}, {"$set": odd})
    filler = db["orders"].find_one({"_id": template.oid}, {"_id": 0})
    db["orders"].insert_many(
        [
            {**filler, "order_id": f"FILL-{n}", "delhivery_lr_number": f"not an lr {n}"}
            for n in range(flow.cap - 2)
        ]
    )
    first, second = seed_orders(db, stack.simulator, flow.key, ["rto_in_transit", "in_transit"])
    shared = {"delhivery_lr_number": first.tracking_key}
    db["orders"].update_one({"_id": second.oid}, {"$set": shared})
    booked = filler["order_status"]

    first_run = materialize_flow(flow.key)
    second_run = materialize_flow(flow.key)

    holders = sorted([first.order_id, second.order_id])
    for run, order in ((first_run, first), (second_run, second)):
        updates = stored_frame(stack, "status_updates", flow.key, run.run_id).set_index("order_id")
        assert len(updates) == flow.cap
        other = second if order is first else first
        assert other.order_id not in updates.index  # the pair is split between the runs
        row = updates.loc[order.order_id]
        assert row["outcome"] == Outcome.FAILED.value
        assert f"held by live orders {', '.join(holders)}" in row["alert"]
    for order in (first, second):
        doc = db["orders"].find_one({"_id": order.oid})
        assert doc["order_status"] == booked
        assert "last_tracking_time" not in doc and OUTBOX_FIELD not in doc
    assert db["orderTracking"].count_documents({}) == 0
    assert db["ordertrack_outbox"].count_documents({"kind": "crm_rto"}) == 0
