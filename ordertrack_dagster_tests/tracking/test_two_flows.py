"""An order whose free-text `bookingCourier` names two flows' couriers (TWO-FLOWS-ONE-ORDER):
the contract's matching stays, each such order goes to exactly one flow (the aggregator the
booking went through comes first), and the run of that flow says so once per order."""

import logging
from datetime import UTC, datetime

import pandas as pd
import pytest

from ordertrack_dagster.effects.alert_memory import new_alerts
from ordertrack_dagster.effects.reports import alert_lines
from ordertrack_dagster.flows import CLAIM_PRECEDENCE, FLOWS, get_flow
from ordertrack_dagster.tables import UPDATE_COLUMNS, WRITE_COLUMNS
from ordertrack_dagster.tracking.steps import select_pending
from ordertrack_dagster_tests.helpers import seed_orders

LOG = logging.getLogger(__name__)
NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def test_every_flow_has_a_place_in_the_precedence():
    assert sorted(CLAIM_PRECEDENCE) == sorted(FLOWS)


@pytest.mark.parametrize(
    ("booking_courier", "owner"),
    [
        ("Shiprocket - Delhivery Surface", "shiprocket"),
        ("Delhivery (via SHIPROCKET)", "shiprocket"),
        ("Velocity Express / Delhivery", "velocity"),
        ("Shiprocket Velocity", "shiprocket"),
        ("Delhivery Surface", "delhivery_b2c"),
    ],
)
def test_an_order_naming_two_couriers_is_selected_by_one_flow_only(
    stack, stack_env, db, booking_courier, owner
):
    [order] = seed_orders(
        db, stack.simulator, "delhivery_b2c", ["in_transit"], bookingCourier=booking_courier
    )
    selected_by = [
        key
        for key in ("delhivery_b2c", "shiprocket", "velocity")
        if order.order_id in set(select_pending(db, get_flow(key), LOG).frame["order_id"])
    ]
    assert selected_by == [owner]


def _run_tables(order_id: str, booking_courier: str):
    pending = pd.DataFrame(
        [{"order_oid": "a" * 24, "order_id": order_id, "tracking_key": "14123456789",
          "bookingCourier": booking_courier, "source": "shopify"}]
    )  # fmt: skip
    return pending, pd.DataFrame(columns=UPDATE_COLUMNS), pd.DataFrame(columns=WRITE_COLUMNS)


def test_the_owning_flow_alerts_once_per_order_that_two_flows_would_take(db):
    pending, updates, writes = _run_tables("OT-1", "Shiprocket - Delhivery Surface")
    lines = {
        run: alert_lines("shiprocket", run, updates, writes, NOW, pending) for run in ("r1", "r2")
    }
    [line] = lines["r1"]
    assert line["kind"] == "two_flows" and line["order_id"] == "OT-1"
    assert "also matches delhivery_b2c; tracked by shiprocket only" in line["message"]
    assert new_alerts(db, lines["r1"], "r1", NOW) == lines["r1"]
    assert new_alerts(db, lines["r2"], "r2", NOW) == []  # every run logs it, Slack hears once


def test_an_order_one_flow_matches_raises_no_claim_alert():
    pending, updates, writes = _run_tables("OT-2", "Delhivery Surface")
    assert alert_lines("delhivery_b2c", "r1", updates, writes, NOW, pending) == []
