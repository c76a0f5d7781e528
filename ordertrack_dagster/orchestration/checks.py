"""Freshness: are the orders a flow is due to track actually being polled? (A failing check
is posted to the alerts channel once per failure.)

A run can succeed while orders fall behind (a courier pause, failed batches, a cap too small,
a stopped schedule or a stuck run). One check per flow, on `order_status_writes`, counts the
flow's due orders (its contract §2 selection) whose last poll is older than a threshold, three
schedule intervals unless configured. The checks run on their own schedule, apart from the
tracking runs, so they also notice when no run happens at all.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSpec,
    Config,
    multi_asset_check,
)
from pydantic import Field
from pymongo.database import Database

from ordertrack_dagster.effects.delivery import DeliveryDeferred, DeliveryError
from ordertrack_dagster.effects.senders import post_slack
from ordertrack_dagster.effects.settings import EffectsSettings
from ordertrack_dagster.flows import Flow, get_flow, schedule_interval
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.resources.slack import OrdertrackSlackResource
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.tables import ORDER_STATUS_WRITES, flow_partitions
from ordertrack_dagster.tracking.selection import SelectionPolicy, build_query

FRESHNESS_INTERVALS = 3


@dataclass(frozen=True)
class Staleness:
    """Due orders not polled since `cutoff`: how many, and the one waiting longest."""

    cutoff: datetime
    count: int
    oldest_order_id: str | None = None
    oldest_polled_at: datetime | None = None  # None: never polled
    oldest_booked_at: datetime | None = None


def default_max_age(flow: Flow) -> timedelta:
    return FRESHNESS_INTERVALS * schedule_interval(flow.cron)


def stale_filter(selection: dict[str, Any], cutoff: datetime) -> dict[str, Any]:
    """A flow's selection filter, narrowed to orders last polled before `cutoff`.

    A never-polled order counts only once it was booked before `cutoff`: an order booked a
    minute ago has simply not met its first run yet.
    """
    return {
        "$and": [
            selection,
            {
                "$or": [
                    {"last_tracking_time": {"$lt": cutoff}},
                    {"last_tracking_time": None, "isBooked.timestamp": {"$lt": cutoff}},
                ]
            },
        ]
    }


def find_stale(
    db: Database, flow: Flow, policy: SelectionPolicy, now: datetime, max_age: timedelta
) -> Staleness:
    """Two cheap queries: a count, and the single oldest order in selection order."""
    cutoff = now - max_age
    selection = build_query(flow, policy, now)
    query = stale_filter(selection.filter, cutoff)
    count = db["orders"].count_documents(query)
    if not count:
        return Staleness(cutoff=cutoff, count=0)
    projection = {"order_id": 1, "last_tracking_time": 1, "isBooked.timestamp": 1}
    oldest = db["orders"].find_one(query, projection, sort=selection.sort)
    if oldest is None:  # polled between the two queries
        return Staleness(cutoff=cutoff, count=count)
    return Staleness(
        cutoff=cutoff,
        count=count,
        oldest_order_id=str(oldest.get("order_id")),
        oldest_polled_at=oldest.get("last_tracking_time"),
        oldest_booked_at=(oldest.get("isBooked") or {}).get("timestamp"),
    )


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def describe_staleness(flow: Flow, stale: Staleness, max_age: timedelta) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "flow": flow.key,
        "stale_orders": stale.count,
        "max_age_minutes": round(max_age.total_seconds() / 60, 1),
        "cutoff": _when(stale.cutoff),
    }
    if stale.oldest_order_id is not None:
        metadata |= {
            "oldest_order_id": stale.oldest_order_id,
            "oldest_last_tracking_time": _when(stale.oldest_polled_at),
            "oldest_booked_at": _when(stale.oldest_booked_at),
        }
    return metadata


class FreshnessConfig(Config):
    max_age_minutes: float | None = Field(
        default=None,
        description="How long a due order may go unpolled; default three schedule intervals.",
    )


def check_name(flow_key: str) -> str:
    return f"{flow_key}_due_orders_polled"


def evaluate_flow(
    db: Database, flow: Flow, max_age: timedelta | None, now: datetime
) -> AssetCheckResult:
    """One flow's check result, for the check of that name."""
    max_age = max_age or default_max_age(flow)
    stale = find_stale(db, flow, SelectionPolicy.from_env(), now, max_age)
    metadata = describe_staleness(flow, stale, max_age)
    if stale.count:
        description = (
            f"{stale.count} {flow.key} orders due for tracking were not polled for over "
            f"{metadata['max_age_minutes']} minutes; oldest: order {stale.oldest_order_id} "
            f"(last polled {_when(stale.oldest_polled_at)})"
        )
    else:
        description = f"every due {flow.key} order was polled since {_when(stale.cutoff)}"
    return AssetCheckResult(
        asset_key=ORDER_STATUS_WRITES,
        check_name=check_name(flow.key),
        passed=stale.count == 0,
        description=description,
        metadata=metadata,
    )


def alert_once(
    db: Database, result: AssetCheckResult, flow: Flow, post: Callable[[str], Any]
) -> str | None:
    """Post a failing freshness check to Slack once per failure, not at every evaluation.

    The failure is remembered in the shared store until the check passes again; a post that
    fails is not remembered, so the next evaluation tries again. Returns what went wrong.
    """
    state = SharedState(db)
    alert = f"freshness_alert:{flow.key}"
    if result.passed:
        state.forget_alert(alert)
        return None
    if state.alerted(alert):
        return None
    try:
        post(f":hourglass: *{flow.courier_label}*: {result.description}")
    except (DeliveryError, DeliveryDeferred) as error:
        return f"freshness alert not posted, the next evaluation tries again: {error}"
    state.remember_alert(alert)
    return None


_FLOW_OF_CHECK = {check_name(key): key for key in flow_partitions.get_partition_keys()}


@multi_asset_check(
    name="due_orders_polled",
    specs=[
        AssetCheckSpec(
            name=name,
            asset=ORDER_STATUS_WRITES,
            description=f"Every order the {key} flow is due to track was polled within three "
            "schedule intervals (or max_age_minutes); reports how many were not and the oldest.",
        )
        for name, key in _FLOW_OF_CHECK.items()
    ],
    can_subset=True,
)
def due_orders_polled(
    context: AssetCheckExecutionContext,
    config: FreshnessConfig,
    mongo: MongoResource,
    slack: OrdertrackSlackResource,
    effects: EffectsSettings,
) -> Iterator[AssetCheckResult]:
    max_age = timedelta(minutes=config.max_age_minutes) if config.max_age_minutes else None
    db = mongo.get_database()
    now = datetime.now(UTC)
    client = slack.get_client()
    for key in sorted(context.selected_asset_check_keys, key=lambda k: k.name):
        flow = get_flow(_FLOW_OF_CHECK[key.name])
        result = evaluate_flow(db, flow, max_age, now)
        problem = alert_once(
            db, result, flow, lambda text: post_slack(client, effects.alerts_channel, text)
        )
        if problem:
            context.log.warning(problem)
        yield result


CHECKS = [due_orders_polled]
