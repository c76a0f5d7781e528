"""Freshness: are the orders a flow is due to track actually being polled? (A failing check
is posted to the alerts channel once per failure.)

A run can succeed while orders fall behind (a courier pause, failed batches, a cap too small,
a stopped schedule or a stuck run). One check per flow, on `order_status_writes`, counts the
flow's due orders (its contract §2 selection) whose last poll is older than their status
allows: the polling table's maximum interval (polling.py), the bound adaptive polling keeps
when a courier's limit binds, and never less than three schedule intervals; one threshold for
all when configured. The checks run on their own schedule, apart from the tracking runs, so
they also notice when no run happens at all.
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
from ordertrack_dagster.polling import max_interval
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.resources.slack import OrdertrackSlackResource
from ordertrack_dagster.statuses import Canonical
from ordertrack_dagster.tables import ORDER_STATUS_WRITES, flow_partitions
from ordertrack_dagster.tracking.selection import SelectionPolicy, build_query
from ordertrack_dagster.tracking.writer import StatusCatalogue

FRESHNESS_INTERVALS = 3


#: How the check's metadata names the statuses that are not canonical (booked, manifested...).
OTHER_STATUSES = "other"


@dataclass(frozen=True)
class Staleness:
    """Due orders not polled within their status's bound: how many, and the one waiting longest."""

    max_age: dict[str, timedelta]  # by canonical status, and OTHER_STATUSES
    count: int
    oldest_order_id: str | None = None
    oldest_polled_at: datetime | None = None  # None: never polled
    oldest_booked_at: datetime | None = None


def default_max_age(flow: Flow) -> timedelta:
    return FRESHNESS_INTERVALS * schedule_interval(flow.cron)


def max_age_of(flow: Flow, status: Canonical | None) -> timedelta:
    """How long an order in `status` may go unpolled: the polling table's maximum interval,
    and never less than three schedule intervals (no flow polls faster than its schedule)."""
    return max(max_interval(status), default_max_age(flow))


def _not_polled_since(cutoff: datetime) -> dict[str, Any]:
    """Last polled before `cutoff`; a never-polled order only once it was booked before it (an
    order booked a minute ago has simply not met its first run yet)."""
    return {
        "$or": [
            {"last_tracking_time": {"$lt": cutoff}},
            {"last_tracking_time": None, "isBooked.timestamp": {"$lt": cutoff}},
        ]
    }


def stale_filter(
    selection: dict[str, Any],
    catalogue: StatusCatalogue,
    max_age: dict[str, timedelta],
    now: datetime,
) -> dict[str, Any]:
    """A flow's selection filter, narrowed to orders not polled within their status's bound.

    Statuses sharing a bound share one clause; the statuses that are not canonical are the
    ones no other clause names, so a status id the table does not know is still checked.
    """
    ids_by_age: dict[timedelta, list[int]] = {}
    for status, status_id in catalogue.ids.items():
        ids_by_age.setdefault(max_age[status.value], []).append(status_id)
    other_age = max_age[OTHER_STATUSES]
    named = [i for age, ids in ids_by_age.items() if age != other_age for i in ids]
    clauses = [
        {"order_status": {"$in": ids}, **_not_polled_since(now - age)}
        for age, ids in ids_by_age.items()
        if age != other_age
    ]
    clauses.append({"order_status": {"$nin": named}, **_not_polled_since(now - other_age)})
    return {"$and": [selection, {"$or": clauses}]}


def find_stale(
    db: Database,
    flow: Flow,
    policy: SelectionPolicy,
    now: datetime,
    max_age: timedelta | None = None,
) -> Staleness:
    """Two cheap queries: a count, and the single oldest order in selection order. Each
    status's bound is `max_age_of` unless `max_age` sets one for all."""
    bounds = {status.value: max_age or max_age_of(flow, status) for status in Canonical} | {
        OTHER_STATUSES: max_age or max_age_of(flow, None)
    }
    selection = build_query(flow, policy, now)
    query = stale_filter(selection.filter, StatusCatalogue.load(db), bounds, now)
    count = db["orders"].count_documents(query)
    if not count:
        return Staleness(max_age=bounds, count=0)
    projection = {"order_id": 1, "last_tracking_time": 1, "isBooked.timestamp": 1}
    oldest = db["orders"].find_one(query, projection, sort=selection.sort)
    if oldest is None:  # polled between the two queries
        return Staleness(max_age=bounds, count=count)
    return Staleness(
        max_age=bounds,
        count=count,
        oldest_order_id=str(oldest.get("order_id")),
        oldest_polled_at=oldest.get("last_tracking_time"),
        oldest_booked_at=(oldest.get("isBooked") or {}).get("timestamp"),
    )


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def describe_staleness(flow: Flow, stale: Staleness) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "flow": flow.key,
        "stale_orders": stale.count,
        "max_age_minutes": {
            status: round(age.total_seconds() / 60, 1) for status, age in stale.max_age.items()
        },
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
        description="How long a due order may go unpolled, whatever its status; default the "
        "polling table's maximum interval of its status, at least three schedule intervals.",
    )


def check_name(flow_key: str) -> str:
    return f"{flow_key}_due_orders_polled"


def evaluate_flow(
    db: Database, flow: Flow, max_age: timedelta | None, now: datetime
) -> AssetCheckResult:
    """One flow's check result, for the check of that name."""
    stale = find_stale(db, flow, SelectionPolicy.from_env(), now, max_age)
    metadata = describe_staleness(flow, stale)
    bound = (
        f"{round(max_age.total_seconds() / 60, 1)} minutes"
        if max_age
        else "the longest interval the polling table allows their status"
    )
    if stale.count:
        description = (
            f"{stale.count} {flow.key} orders due for tracking were not polled within {bound}; "
            f"oldest: order {stale.oldest_order_id} (last polled {_when(stale.oldest_polled_at)})"
        )
    else:
        description = f"every due {flow.key} order was polled within {bound}"
    return AssetCheckResult(
        asset_key=ORDER_STATUS_WRITES,
        check_name=check_name(flow.key),
        passed=stale.count == 0,
        description=description,
        metadata=metadata,
    )


STATE_COLLECTION = "ordertrack_state"


def alert_once(
    db: Database, result: AssetCheckResult, flow: Flow, post: Callable[[str], Any]
) -> str | None:
    """Post a failing freshness check to Slack once per failure, not at every evaluation.

    The failure is remembered in `ordertrack_state` until the check passes again; a post that
    fails is not remembered, so the next evaluation tries again. Returns what went wrong.
    """
    state = db[STATE_COLLECTION]
    key = {"_id": f"freshness_alert:{flow.key}"}
    if result.passed:
        state.delete_one(key)
        return None
    if state.find_one(key) is not None:
        return None
    try:
        post(f":hourglass: *{flow.courier_label}*: {result.description}")
    except (DeliveryError, DeliveryDeferred) as error:
        return f"freshness alert not posted, the next evaluation tries again: {error}"
    state.replace_one(key, {**key, "alerted_at": datetime.now(UTC)}, upsert=True)
    return None


_FLOW_OF_CHECK = {check_name(key): key for key in flow_partitions.get_partition_keys()}


@multi_asset_check(
    name="due_orders_polled",
    specs=[
        AssetCheckSpec(
            name=name,
            asset=ORDER_STATUS_WRITES,
            description=f"Every order the {key} flow is due to track was polled within the "
            "polling table's maximum interval of its status, at least three schedule intervals "
            "(or max_age_minutes); reports how many were not and the oldest.",
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
