"""Freshness: are the orders a flow is due to track actually being polled? And is the
tracking history reaching S3? (A failing check is posted to the alerts channel once per
failure.)

A run can succeed while orders fall behind (a courier pause, failed batches, a cap too small,
a stopped schedule or a stuck run). One check per flow, on `order_status_writes`, counts the
flow's due orders (its contract §2 selection) whose last poll is older than their status
allows: the polling policy's maximum interval (polling.py `max_interval`, the bound adaptive
polling keeps when a courier's limit binds), never less than three schedule intervals nor
than what the flow's budget can hold (flows.py `longest_wait`); one threshold for all when
configured. The checks run on their own schedule, apart from the tracking runs, so
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
    asset_check,
    multi_asset_check,
)
from pydantic import Field
from pymongo import ASCENDING
from pymongo.database import Database

from ordertrack_dagster.effects import DeliveryDeferred, DeliveryError, EffectsSettings, post_slack
from ordertrack_dagster.flows import Flow, get_flow
from ordertrack_dagster.polling import max_interval
from ordertrack_dagster.resources.history_queue import RETENTION, HistoryQueue
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.resources.slack import OrdertrackSlackResource
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.statuses import Canonical
from ordertrack_dagster.tables import ORDER_STATUS_WRITES, RAW_COURIER_RESPONSES, flow_partitions
from ordertrack_dagster.tracking import SelectionPolicy, StatusCatalogue, build_query

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


#: The order unpolled longest: no answer ever first, then the earliest last answer.
OLDEST_FIRST = [("last_tracking_time", ASCENDING), ("_id", ASCENDING)]


def find_stale(
    db: Database,
    flow: Flow,
    policy: SelectionPolicy,
    now: datetime,
    max_age: timedelta | None = None,
) -> Staleness:
    """Two cheap queries: a count, and the stale order polled longest ago (never polled
    first; not the selection's order, which is by next poll). Each status's bound is
    the policy's `max_interval` unless `max_age` sets one for all."""
    bounds = {status.value: max_age or max_interval(status, flow) for status in Canonical} | {
        OTHER_STATUSES: max_age or max_interval(None, flow)
    }
    selection = build_query(flow, policy, now)
    query = stale_filter(selection.filter, StatusCatalogue.load(db), bounds, now)
    count = db["orders"].count_documents(query)
    if not count:
        return Staleness(max_age=bounds, count=0)
    projection = {"order_id": 1, "last_tracking_time": 1, "isBooked.timestamp": 1}
    oldest = db["orders"].find_one(query, projection, sort=OLDEST_FIRST)
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
        "polling table's maximum interval of its status, at least three schedule intervals "
        "and what the flow's budget can hold.",
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


def alert_once_per_failure(
    db: Database, name: str, failing: bool, text: str, post: Callable[[str], Any]
) -> str | None:
    """Post a failing check's `text` to Slack once per failure, not at every evaluation.

    The failure is remembered in the shared store under `name` until the check passes
    again; a post that fails is not remembered, so the next evaluation tries again. Returns
    what went wrong.
    """
    state = SharedState(db)
    if not failing:
        state.forget_alert(name)
        return None
    if state.alerted(name):
        return None
    try:
        post(text)
    except (DeliveryError, DeliveryDeferred) as error:
        return f"{name} not posted, the next evaluation tries again: {error}"
    state.remember_alert(name)
    return None


def alert_once(
    db: Database, result: AssetCheckResult, flow: Flow, post: Callable[[str], Any]
) -> str | None:
    """A failing freshness check, posted once per failure."""
    return alert_once_per_failure(
        db,
        f"freshness_alert:{flow.key}",
        not result.passed,
        f":hourglass: *{flow.courier_label}*: {result.description}",
        post,
    )


_FLOW_OF_CHECK = {check_name(key): key for key in flow_partitions.get_partition_keys()}


@multi_asset_check(
    name="due_orders_polled",
    specs=[
        AssetCheckSpec(
            name=name,
            asset=ORDER_STATUS_WRITES,
            description=f"Every order the {key} flow is due to track was polled within the "
            "polling table's maximum interval of its status, at least three schedule intervals "
            "and what the flow's budget can hold (or max_age_minutes); reports how many were "
            "not and the oldest.",
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


#: A history object S3 has refused for this long is an outage worth a person's attention.
HISTORY_ALERT_AFTER = timedelta(hours=3)
#: ... and one refused for this long is dropped, named in an alert: by then the raw consignee
#: data it holds has stayed in MongoDB as long as a published object would (`RETENTION`).
HISTORY_DROP_AFTER = RETENTION
HISTORY_CHECK = "history_published_to_s3"
HISTORY_ALERT = "history_alert"
#: A drop alert names at most this many objects, then counts the rest.
NAMED_IN_ALERT = 30


def _days(span: timedelta) -> str:
    return f"{span.total_seconds() / 86_400:g}"


def _object_name(header: dict[str, Any]) -> str:
    return (
        f"{header['asset']} of flow {header['flow']}, run {header['run_id']} "
        f"(stored {_when(header['created_at'])}, {header.get('rows', '?')} rows)"
    )


def drop_alert_text(dropped: list[dict[str, Any]], drop_after: timedelta) -> str:
    """What was lost: each object by asset, flow and run id (the first few), and the count."""
    names = [f"• {_object_name(header)}" for header in dropped[:NAMED_IN_ALERT]]
    if len(dropped) > NAMED_IN_ALERT:
        names.append(f"• and {len(dropped) - NAMED_IN_ALERT} more")
    return "\n".join(
        [
            f":wastebasket: {len(dropped)} tracking history objects S3 refused for over "
            f"{_days(drop_after)} days were dropped from MongoDB and are lost to analysts:",
            *names,
        ]
    )


@dataclass(frozen=True)
class HistoryHealth:
    """One evaluation of the history queue: what waits too long, what was dropped."""

    waiting: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    problems: list[str]


def tend_history(
    db: Database,
    now: datetime,
    alert_after: timedelta,
    drop_after: timedelta,
    post: Callable[[str], Any],
) -> HistoryHealth:
    """Drop the objects queued longer than `drop_after`, once an alert naming them is posted
    (if Slack fails they stay, and the next evaluation tries again: nothing is lost
    unannounced), then alert once per failure while any object waits over `alert_after`."""
    queue = HistoryQueue(db)
    problems: list[str] = []
    dropped = queue.waiting_since(now - drop_after)
    if dropped:
        try:
            post(drop_alert_text(dropped, drop_after))
        except (DeliveryError, DeliveryDeferred) as error:
            problems.append(f"history drop not announced, so nothing was dropped: {error}")
            dropped = []
        else:
            queue.drop(dropped)
    waiting = queue.waiting_since(now - alert_after)
    if waiting:
        oldest = waiting[0]
        text = (
            f":inbox_tray: {len(waiting)} tracking history objects are waiting in MongoDB for "
            f"over {alert_after.total_seconds() / 3600:g} h because S3 refuses them (a rotated "
            f"key? a wrong bucket?); oldest: {_object_name(oldest)}. They are dropped after "
            f"{_days(drop_after)} days."
        )
    else:
        text = ""
    problem = alert_once_per_failure(db, HISTORY_ALERT, bool(waiting), text, post)
    return HistoryHealth(waiting, dropped, [*problems, *([problem] if problem else [])])


class HistoryCheckConfig(Config):
    alert_after_hours: float = Field(
        default=HISTORY_ALERT_AFTER.total_seconds() / 3600,
        description="Alert when a history object has waited for S3 longer than this.",
    )
    drop_after_days: float = Field(
        default=HISTORY_DROP_AFTER.days,
        description="Drop (with an alert naming them) history objects S3 refused this long.",
    )


@asset_check(
    asset=RAW_COURIER_RESPONSES,
    name=HISTORY_CHECK,
    description="No tracking history object (raw answers, mapped and written tables) waits "
    "in MongoDB for S3 longer than a few hours; those refused past the retention are dropped "
    "and named in an alert. Posted to Slack once per failure.",
)
def history_published_to_s3(
    context: AssetCheckExecutionContext,
    config: HistoryCheckConfig,
    mongo: MongoResource,
    slack: OrdertrackSlackResource,
    effects: EffectsSettings,
) -> AssetCheckResult:
    client = slack.get_client()
    health = tend_history(
        mongo.get_database(),
        datetime.now(UTC),
        timedelta(hours=config.alert_after_hours),
        timedelta(days=config.drop_after_days),
        lambda text: post_slack(client, effects.alerts_channel, text),
    )
    for problem in health.problems:
        context.log.warning(problem)
    metadata: dict[str, Any] = {
        "waiting_too_long": len(health.waiting),
        "dropped": len(health.dropped),
        "dropped_objects": [_object_name(header) for header in health.dropped[:NAMED_IN_ALERT]],
    }
    if health.waiting:
        metadata["oldest_waiting"] = _object_name(health.waiting[0])
    return AssetCheckResult(
        passed=not (health.waiting or health.dropped or health.problems),
        metadata=metadata,
        description=(
            f"{len(health.waiting)} history objects waiting for S3 over "
            f"{config.alert_after_hours:g} h; {len(health.dropped)} dropped"
        ),
    )


CHECKS = [due_orders_polled, history_published_to_s3]
