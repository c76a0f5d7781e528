"""Helpers shared by the tests that run whole flows: seed orders whose shipments the courier
simulator answers for, materialize a flow the way a scheduled tick does, read what it stored.

    seeded = seed_orders(db, stack.simulator, "shiprocket", ["delivered", "in_transit", None])
    result = materialize_flow("shiprocket")
    writes = stored_frame(stack, "order_status_writes", "shiprocket", result.run_id)

Each test's shipments get fresh tracking keys, so tests never see each other's shipments in
the session-wide simulator.
"""

from __future__ import annotations

import ast
import asyncio
import os
import random
import uuid
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
from bson import ObjectId
from dagster import (
    AssetSelection,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    materialize,
)
from pymongo.database import Database

from ordertrack_dagster import settings
from ordertrack_dagster.couriers import COURIERS
from ordertrack_dagster.couriers.engine import CourierClient
from ordertrack_dagster.definitions import build_definitions
from ordertrack_dagster.devstack.seed import seed_reference_data
from ordertrack_dagster.devstack.simulator import SCENARIOS, ShipmentSpec, SimulatorAdmin
from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.records import FetchRecord, FetchResult
from ordertrack_dagster.resources.s3 import read_parquet_object
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.tracking.assets import TRACKING_ASSETS

if TYPE_CHECKING:
    from ordertrack_dagster.devstack.stack import EmbeddedStack

_RANDOM = random.SystemRandom()

#: How each flow's orders look: (bookingCourier, source).
ORDER_SHAPE = {
    "delhivery_b2c": ("Delhivery Surface", "shopify"),
    "delhivery_b2b": ("Delhivery B2B", "woocommerce"),
    "shiprocket": ("Shiprocket", "shopify"),
    "velocity": ("Velocity Express", "Retailer"),
    "delhivery_fallback": ("Delhivery", "amazon"),
}


@dataclass(frozen=True)
class Shipment:
    """One order's shipment as the simulator will answer for it.

    `step`: pin the shipment at this simulator step (a stable answer); None lets `scenario`
    run on the simulator's clock from `booked_days_ago`. `known=False`: the courier has never
    heard of the tracking key.
    """

    step: str | None = "in_transit"
    scenario: str | None = None  # default: the first scenario whose life cycle has `step`
    known: bool = True
    booked_days_ago: float = 2.0

    def scenario_name(self) -> str:
        if self.scenario:
            return self.scenario
        if self.step is None:
            return "forward"
        return next((name for name, path in SCENARIOS.items() if self.step in path), "forward")


UNKNOWN = Shipment(step=None, known=False)


@dataclass(frozen=True)
class SeededOrder:
    oid: ObjectId
    order_id: str
    tracking_key: str
    shipment: Shipment


def new_tracking_key(flow: str) -> str:
    """A fresh AWB (or LR number for B2B) in the courier's own style."""
    digits = str(_RANDOM.randrange(10**11, 10**12))
    return {
        "delhivery_b2c": "1490" + digits[:10],
        "delhivery_fallback": "2316" + digits[:10],
        "delhivery_b2b": "22" + digits[:9],
        "shiprocket": "14" + digits,
        "velocity": "PD" + digits[:9],
    }[flow]


def register_shipments(
    simulator: SimulatorAdmin,
    flow: str,
    shipments: Sequence[str | Shipment | None],
    *,
    order_ids: Sequence[str] | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Register shipments with the simulator only (no orders); their fresh tracking keys.

    A shipment is a step name (pinned there), None (unknown to the courier) or a `Shipment`.
    """
    now = now or datetime.now(UTC)
    keys, specs, pinned = [], [], []
    for index, item in enumerate(shipments):
        shipment = as_shipment(item)
        key = new_tracking_key(flow)
        keys.append(key)
        if not shipment.known:
            continue
        booked_at = now - timedelta(days=shipment.booked_days_ago)
        spec: ShipmentSpec = {
            "courier": flow,
            "tracking_key": key,
            "order_id": order_ids[index] if order_ids else f"OT-{key}",
            "booked_at": booked_at.isoformat(),
            "scenario": shipment.scenario_name(),
        }
        specs.append(spec)
        if shipment.step is not None:
            pinned.append((key, shipment.step))
    if specs:
        simulator.register_shipments(specs)
    for key, step in pinned:
        simulator.force_step(flow, key, step, hold=True)
    return keys


def seed_orders(
    db: Database,
    simulator: SimulatorAdmin,
    flow: str,
    shipments: Sequence[str | Shipment | None],
    *,
    status: str = "booked",
    now: datetime | None = None,
    **fields: Any,
) -> list[SeededOrder]:
    """Insert one order per shipment, selectable by exactly `flow`, and register the shipments.

    A shipment is a step name (pinned there), None (unknown to the courier) or a `Shipment`.
    Orders start at `status` (a name of the seeded `status` collection); `fields` override
    or add order fields (e.g. `being_tracked=True`, `customer={...}`). The `status` and
    `marketplaces` collections are seeded too.
    """
    get_flow(flow)
    now = now or datetime.now(UTC)
    reference = seed_reference_data(db)
    status_doc = reference.statuses[status]
    booking_courier, source = ORDER_SHAPE[flow]
    items = [as_shipment(item) for item in shipments]
    order_ids = [f"OT-{uuid.uuid4().hex[:10].upper()}" for _ in items]
    keys = register_shipments(simulator, flow, items, order_ids=order_ids, now=now)
    orders, seeded = [], []
    for shipment, order_id, key in zip(items, order_ids, keys, strict=True):
        doc: dict[str, Any] = {
            "_id": ObjectId(),
            "order_id": order_id,
            "order_status": status_doc["status_id"],
            "order_status_map": [status_doc["_id"]],
            "awb_number": key if flow != "delhivery_b2b" else new_tracking_key("delhivery_b2c"),
            "bookingCourier": booking_courier,
            "source": source,
            "isBooked": {"timestamp": now - timedelta(days=shipment.booked_days_ago)},
            "marketplace": reference.marketplaces[source],
            "customer": {"name": "Test Customer", "phone": "9876543210", "email": "t@example.com"},
            "total_amt": 1499.0,
            **fields,
        }
        if flow == "delhivery_b2b":
            doc["delhivery_lr_number"] = key
        orders.append(doc)
        seeded.append(SeededOrder(doc["_id"], order_id, key, shipment))
    if orders:
        db["orders"].insert_many(orders)
    return seeded


def as_shipment(item: str | Shipment | None) -> Shipment:
    if item is None:
        return UNKNOWN
    if isinstance(item, str):
        return Shipment(step=item)
    return item


def load_definitions() -> Definitions:
    """The code location's definitions, configured from the current environment (a test's)."""
    return build_definitions(os.environ)


def materialize_flow(
    flow: str,
    *,
    run_config: Mapping[str, Any] | None = None,
    raise_on_error: bool = True,
    tags: Mapping[str, str] | None = None,
    defs: Definitions | None = None,
    instance: DagsterInstance | None = None,
) -> ExecuteInProcessResult:
    """Materialize `group:tracking` for the flow's partition with the code location's resources,
    as `dagster asset materialize --select group:tracking --partition <flow>` does.

    Without an `instance`, the run gets a fresh ephemeral one, entered as the current
    instance: Dagster keeps the current instance in process-wide state, and an instance a
    previous test left behind there must not leak into this run.
    """
    defs = defs or load_definitions()
    with ExitStack() as scope:
        if instance is None:
            instance = scope.enter_context(DagsterInstance.ephemeral())
        return materialize(
            list(defs.assets or []),
            partition_key=flow,
            resources=defs.resources,
            selection=AssetSelection.groups("tracking"),
            run_config=run_config,
            raise_on_error=raise_on_error,
            tags=tags,
            instance=instance,
        )


def stored_frame(stack: EmbeddedStack, asset: str, flow: str, run_id: str) -> pd.DataFrame:
    """The DataFrame a run stored on S3 for one asset of one flow."""
    client = stack.s3_client()
    prefix = f"ordertrack/{asset}/flow={flow}/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix)
    keys = [
        item["Key"]
        for page in pages
        for item in page.get("Contents", [])
        if item["Key"].endswith(f"/{run_id}.parquet")
    ]
    if len(keys) != 1:
        raise AssertionError(f"expected one stored {asset} object for run {run_id}, found {keys}")
    return read_parquet_object(client, stack.bucket, keys[0])


def orders_by_id(db: Database, seeded: Sequence[SeededOrder]) -> dict[str, dict[str, Any]]:
    """The seeded orders as now stored, by order_id."""
    docs = db["orders"].find({"_id": {"$in": [order.oid for order in seeded]}})
    return {doc["order_id"]: doc for doc in docs}


def run_fetch(client: CourierClient, keys: Sequence[str]) -> FetchResult:
    """One run of a courier client over `keys`, as the raw-responses asset does it."""
    return asyncio.run(client.fetch(list(keys)))


def records_by_key(result: FetchResult) -> dict[str, FetchRecord]:
    return {record.tracking_key: record for record in result.records}


def simulator_counts(simulator: SimulatorAdmin, courier: str) -> dict[str, Any]:
    """The simulator's counters for one courier (requests, logins, failed_logins, ...)."""
    return simulator.stats()["couriers"][courier]


def courier_resource(flow: str, env: Mapping[str, str], **overrides: str) -> Any:
    """The flow's courier resource configured from contract §8 names in `env`, as the code
    location does, with fields overridden (e.g. a wrong password)."""
    return settings.courier_resource(COURIERS[flow].resource_key, env, **overrides)


def courier_client(
    flow: str,
    env: Mapping[str, str],
    state: SharedState,
    *,
    flow_changes: Mapping[str, Any] | None = None,
    **overrides: str,
) -> CourierClient:
    """A client for one run of `flow`; `flow_changes` adjust the flow (batch size, workers...)."""
    changes = dict(flow_changes or {})
    if "concurrency" in changes:
        changes.setdefault("concurrency_env", None)  # the override is the test's, not the env's
    return courier_resource(flow, env, **overrides).client(
        replace(get_flow(flow), **changes), state
    )


def run_tracking_assets(defs: Definitions, flow: str) -> ExecuteInProcessResult:
    """One flow's four tracking assets, in process, with the code location's resources and
    without the side effects (what the analytics read)."""
    return materialize(
        list(defs.assets or []),
        partition_key=flow,
        resources=defs.resources,
        selection=[tracking_asset.key for tracking_asset in TRACKING_ASSETS],
    )


def docstring_ids(tree: ast.AST) -> set[int]:
    """The ids of the string constants that are docstrings (module, class, function), so a
    test scanning a module's strings can pass over its prose."""
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
