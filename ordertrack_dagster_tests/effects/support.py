"""What the effects tests share: runs of one flow in one Dagster instance, with resources
overridable per run, and the places a secret must never show up."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from bson import ObjectId
from dagster import (
    AssetSelection,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    materialize,
)
from pymongo.database import Database

from ordertrack_dagster.devstack.seed import seed_reference_data
from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.effects.assets import EFFECT_ASSETS
from ordertrack_dagster.effects.outbox import OUTBOX_COLLECTION
from ordertrack_dagster.effects.settings import EffectsSettings
from ordertrack_dagster.records import Outcome
from ordertrack_dagster.resources.state import STATE_COLLECTION
from ordertrack_dagster.statuses import Canonical
from ordertrack_dagster.tracking.assets import TRACKING_ASSETS
from ordertrack_dagster.tracking.plan import PolledOrder, StatusCatalogue, plan_writes
from ordertrack_dagster.tracking.writer import apply_plan
from ordertrack_dagster_tests.helpers import load_definitions

FLOW = "delhivery_b2c"
TRACKING = [asset.key.path[-1] for asset in TRACKING_ASSETS]
EFFECTS = [asset.key.path[-1] for asset in EFFECT_ASSETS]
SECRET_ENV = (
    "SLACK_TOKEN",
    "CRM_CLIENT_SECRET",
    "CRM_WEBHOOK_SECRET",
    "EMAIL_PASSWORD",
    "DELHIVERY_AUTH_TOKEN_B2C",
)
_LINK = re.compile(r"<(https?://[^|>]+)\|")


@dataclass
class Runner:
    """Materializes assets of one flow's partition; all runs share one Dagster instance, as
    production runs do, so an effect re-run alone finds the run it reports on."""

    instance: DagsterInstance  # entered by the test (the `instance` fixture)
    defs: Definitions = field(default_factory=load_definitions)
    flow: str = FLOW
    # retries are due at once, so a test's next run retries what failed
    effects: dict[str, Any] = field(default_factory=lambda: {"retry_base_seconds": 0.0})

    def settings(self, **changes: Any) -> EffectsSettings:
        base = self.defs.resources["effects"]
        return EffectsSettings(**{**base.model_dump(), **self.effects, **changes})

    def run(
        self,
        *assets: str,
        run_config: dict[str, Any] | None = None,
        **resources: Any,
    ) -> ExecuteInProcessResult:
        """`assets` (default: the whole `tracking` group); `resources` replace the location's."""
        selection = AssetSelection.assets(*assets) if assets else AssetSelection.groups("tracking")
        return materialize(
            list(self.defs.assets or []),
            partition_key=self.flow,
            resources={**self.defs.resources, "effects": self.settings(), **resources},
            selection=selection,
            instance=self.instance,
            run_config=run_config,
        )


def delivery_config(*assets: str, **values: Any) -> dict[str, Any]:
    return {"ops": {asset: {"config": values} for asset in assets}}


def metadata(result: ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    [event] = result.asset_materializations_for_node(asset)
    return {name: value.value for name, value in event.metadata.items()}


def checks(result: ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    return {
        evaluation.check_name: evaluation
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.asset_key.path[-1] == asset
    }


def outbox(db: Database) -> dict[str, dict[str, Any]]:
    return {doc["_id"]: doc for doc in db[OUTBOX_COLLECTION].find()}


def mentioning(messages: Iterable[dict[str, Any]], *needles: str) -> list[dict[str, Any]]:
    """The Slack messages whose text names any of `needles` (tests share the stand-in)."""
    return [m for m in messages if any(needle in (m.get("text") or "") for needle in needles)]


def webhooks_for(stack: EmbeddedStack, order_ids: Sequence[str]) -> list[dict[str, Any]]:
    return [w for w in stack.crm_webhooks() if w["body"].get("order_id") in order_ids]


def link(text: str) -> str:
    """The URL of the Slack link in a message, as a reader's client opens it."""
    found = _LINK.search(text)
    assert found, text
    return html.unescape(found.group(1))


def fetch(url: str) -> bytes:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.content


def secrets(env: dict[str, str], db: Database) -> list[str]:
    """Every secret a run could leak: the configured ones and the CRM tokens it obtained."""
    values = [env[name] for name in SECRET_ENV if env.get(name)]
    values += [doc["token"] for doc in db[STATE_COLLECTION].find({"token": {"$exists": True}})]
    return values


def run_texts(result: ExecuteInProcessResult) -> str:
    """Everything a run recorded: log messages, metadata and check results."""
    parts = [event.message or "" for event in result.all_events]
    for event in result.get_asset_materialization_events():
        parts += [
            json.dumps(value.value, default=str)
            for value in event.materialization.metadata.values()
        ]
    for evaluation in result.get_asset_check_evaluations():
        parts += [json.dumps(value.value, default=str) for value in evaluation.metadata.values()]
    return "\n".join(parts)


def moved_by_write_path(
    db: Database, flow: str, orders: list[dict[str, Any]], statuses: Sequence[Any], now: datetime
) -> list[dict[str, Any]]:
    """Insert `orders` and move each to its status with the real write path, as a run that
    stopped right after its MongoDB write leaves them: status changed, markers written."""
    db["orders"].insert_many(orders)
    polled = [
        PolledOrder(
            order["_id"],
            order["order_id"],
            order["awb_number"],
            order["order_status"],
            now,
            Outcome.MAPPED,
            "x",
            status,
            now,
        )
        for order, status in zip(orders, statuses, strict=True)
    ]
    catalogue = StatusCatalogue.load(db)
    apply_plan(db, plan_writes(polled, catalogue, flow, now), catalogue)
    return orders


def write_markers(
    db: Database, statuses: Sequence[Any], order_ids: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Move fresh in-transit orders to `statuses` with the real write path, as a run that
    crashed right after its MongoDB write leaves them: markers written, nothing sent."""
    reference = seed_reference_data(db)
    now = datetime.now(UTC)
    in_transit = reference.statuses[Canonical.IN_TRANSIT]["status_id"]
    order_ids = [*order_ids, *(f"OT-{ObjectId()}" for _ in statuses)]
    orders = [
        {
            "_id": ObjectId(),
            "order_id": order_ids[index],
            "order_status": in_transit,
            "awb_number": f"9{index}{int(time.time() * 1e6)}",
            "marketplace": reference.marketplaces["woocommerce"],
            "customer": {"phone": "9123456789"},
            "total_amt": 2599.5,
        }
        for index, _ in enumerate(statuses)
    ]
    return moved_by_write_path(db, FLOW, orders, statuses, now)
