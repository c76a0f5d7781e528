"""The whole flow through the `dg` CLI, exactly as ops re-run a partition by hand."""

import shutil
import subprocess
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from ordertrack_dagster.devstack.demo import dagster_env, launch_flow_command
from ordertrack_dagster_tests.helpers import orders_by_id, seed_orders, stored_frame

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def dagster_materialize(flow: str, env: dict, home: Path) -> subprocess.CompletedProcess:
    """`dg launch` of the flow's tracking group in its own process, as ops run it by hand."""
    return subprocess.run(
        launch_flow_command(flow), env=dagster_env(env, home),
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_delhivery_b2c_end_to_end_through_the_cli(stack, db, stack_env, tmp_path):
    steps = ["delivered", "in_transit", "out_for_delivery", "failed_attempt", "rto_in_transit",
             "lost", "unmapped", None]  # fmt: skip
    seeded = seed_orders(db, stack.simulator, "delhivery_b2c", steps)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")

    result = dagster_materialize("delhivery_b2c", stack_env, home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SupersessionWarning" not in result.stderr  # `dg launch` is the current command

    orders = orders_by_id(db, seeded)
    names = {doc["status_id"]: doc["name"] for doc in db["status"].find()}
    expected = {
        "delivered": "delivered",
        "in_transit": "in transit",
        "out_for_delivery": "out_for_delivery",
        "failed_attempt": "ndr",
        "rto_in_transit": "rto in transit",
        "lost": "lost",
        "unmapped": "booked",  # unmapped: no change, with an alert
        None: "booked",  # unknown waybill: untouched
    }
    for order in seeded:
        doc = orders[order.order_id]
        assert names[doc["order_status"]] == expected[order.shipment.step], order.shipment
        if order.shipment.step is None:
            assert "last_tracking_time" not in doc  # stays first in line
        else:
            assert doc["last_tracking_time"] is not None
            assert doc["courier_status"]
    delivered = next(o for o in seeded if o.shipment.step == "delivered")
    history = db["orderTracking"].find_one({"orderId": delivered.oid})["History"]
    assert [entry["status"] for entry in history] == ["delivered"]

    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_materializations(
            AssetRecordsFilter(AssetKey("order_status_writes"), asset_partitions=["delhivery_b2c"]),
            limit=1,
        ).records
        assert records, "the write asset was not materialized"
        metadata = records[0].asset_materialization.metadata
        run_id = records[0].run_id
    assert metadata["selected"].value == len(steps)
    assert metadata["updated"].value == 6
    assert metadata["unmapped"].value == 1
    assert metadata["not_found"].value == 1

    raw = stored_frame(stack, "raw_courier_responses", "delhivery_b2c", run_id)
    assert sorted(raw["tracking_key"]) == sorted(order.tracking_key for order in seeded)

    # a second run on the same answers changes nothing and appends nothing
    again = dagster_materialize("delhivery_b2c", stack_env, home)
    assert again.returncode == 0, again.stderr[-3000:]
    history = db["orderTracking"].find_one({"orderId": delivered.oid})["History"]
    assert [entry["status"] for entry in history] == ["delivered"]
