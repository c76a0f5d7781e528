"""The tracking flow as partitioned assets: snapshot -> raw answers -> mapped -> MongoDB write.

One partition per flow, so ops re-run one courier's partition and analysts load one
courier's DataFrames. Each asset records what ops need to judge a run in its metadata.
"""

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    StaticPartitionsDefinition,
    asset,
)
from pydantic import Field

from ordertrack_dagster.couriers import (
    COURIERS,
    blocking_pause,
    describe_pause,
    fetch_to_completion,
)
from ordertrack_dagster.couriers.state import CourierState
from ordertrack_dagster.flows import FLOWS, Flow, get_flow
from ordertrack_dagster.records import FetchRecord, FetchResult, FetchState
from ordertrack_dagster.killpoints import kill_point
from ordertrack_dagster.resources.mongo import (
    COMMANDS,
    DatabaseNotReady,
    MongoResource,
    prepare_database,
)
from ordertrack_dagster.tracking.mapping import (
    interpret_answers,
    polled_orders,
    tracking_key_problem,
)
from ordertrack_dagster.tracking.selection import SNAPSHOT_FIELDS, SelectionPolicy, build_query
from ordertrack_dagster.tracking.writer import (
    Action,
    StatusCatalogue,
    apply_plan,
    plan_writes,
    settle,
)

flow_partitions = StaticPartitionsDefinition(list(FLOWS))

GROUP = "tracking"
IO_MANAGER = "parquet_io_manager"
SNAPSHOT_COLUMNS = [
    "order_oid",
    "order_id",
    "tracking_key",
    "order_status",
    "booked_at",
    "last_tracking_time",
    "bookingCourier",
    "source",
]
COURIER_RESOURCE_KEYS = frozenset(binding.resource_key for binding in COURIERS.values())


class _Measured:
    """Wall time and MongoDB round trips of one asset body, for its metadata."""

    def __enter__(self) -> "_Measured":
        self._started = time.perf_counter()
        self._commands = COMMANDS.snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._started
        self.mongo = COMMANDS.snapshot().since(self._commands)

    def metadata(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "mongodb_round_trips": self.mongo.commands,
            "mongodb_wait_seconds": round(self.mongo.seconds, 3),
        }


def _flow(context: AssetExecutionContext) -> Flow:
    return get_flow(context.partition_key)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return str(value).strip()


@asset(
    group_name=GROUP,
    partitions_def=flow_partitions,
    io_manager_key=IO_MANAGER,
    kinds={"mongodb", "pandas"},
    description="Orders due for tracking in this flow (SPEC §2 filter, oldest-polled first, "
    "capped).",
)
def pending_orders(context: AssetExecutionContext, mongo: MongoResource) -> Output[pd.DataFrame]:
    flow = _flow(context)
    now = datetime.now(UTC)
    query = build_query(flow, SelectionPolicy.from_env(), now)
    with _Measured() as measured:
        db = mongo.get_database()
        try:
            warnings = prepare_database(db)
        except DatabaseNotReady as error:
            raise Failure(description=str(error), allow_retries=False) from None
        for warning in warnings:
            context.log.warning(warning)
        projection = {name: 1 for name in SNAPSHOT_FIELDS}
        cursor = db["orders"].find(query.filter, projection, batch_size=10_000).sort(query.sort)
        if query.limit:
            cursor = cursor.limit(query.limit)
        rows = [
            {
                "order_oid": str(doc["_id"]),
                "order_id": _text(doc.get("order_id")) or "",
                "tracking_key": _text(doc.get(flow.tracking_key_field)) or "",
                "order_status": doc.get("order_status"),
                "booked_at": (doc.get("isBooked") or {}).get("timestamp"),
                "last_tracking_time": doc.get("last_tracking_time"),
                "bookingCourier": _text(doc.get("bookingCourier")),
                "source": _text(doc.get("source")),
            }
            for doc in cursor
        ]
    frame = pd.DataFrame(rows, columns=SNAPSHOT_COLUMNS)
    frame["order_status"] = pd.to_numeric(frame["order_status"], errors="coerce").astype("Int64")
    for column in ("booked_at", "last_tracking_time"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    described = query.describe()
    return Output(
        frame,
        metadata={
            "flow": flow.key,
            "selected": len(frame),
            "never_tracked": int(frame["last_tracking_time"].isna().sum()),
            "oldest_last_tracking_time": str(frame["last_tracking_time"].min()),
            "filter": MetadataValue.json(described["filter"]),
            "sort": MetadataValue.json(described["sort"]),
            "cap": flow.cap if flow.cap is not None else "none",
            **measured.metadata(),
        },
    )


class CourierRequestConfig(Config):
    """Run config of `raw_courier_responses`; the defaults are what schedules run with."""

    force: bool = Field(
        default=False,
        description="Ignore a stored courier pause (rate limit) and ask the courier anyway; "
        "without it a run during a pause stops before sending anything.",
    )


def _stop_if_paused(flow: Flow, state: CourierState) -> None:
    """A run during a stored pause would only defer every key: say so and stop (ops can force)."""
    resume_at = blocking_pause(state, flow.budget_scope, datetime.now(UTC))
    if resume_at is not None:
        raise Failure(
            description=f"{describe_pause(flow, resume_at)}, so this run stops before asking it. "
            "To ask anyway, launch again with run config "
            "`ops: {raw_courier_responses: {config: {force: true}}}`.",
            allow_retries=False,
        )


def _odd_key_records(keys: list[str]) -> list[FetchRecord]:
    now = datetime.now(UTC)
    return [
        FetchRecord(key, FetchState.FAILED, -1, None, now, None, 0, None, tracking_key_problem(key))
        for key in keys
    ]


@asset(
    group_name=GROUP,
    partitions_def=flow_partitions,
    io_manager_key=IO_MANAGER,
    required_resource_keys={"mongo", *COURIER_RESOURCE_KEYS},
    kinds={"pandas", "parquet", "s3"},
    description="What the courier answered, one row per tracking key asked; kept for every run.",
)
def raw_courier_responses(
    context: AssetExecutionContext, config: CourierRequestConfig, pending_orders: pd.DataFrame
) -> Output[pd.DataFrame]:
    flow = _flow(context)
    binding = COURIERS[flow.key]
    keys = list(dict.fromkeys(pending_orders["tracking_key"]))
    good = [key for key in keys if tracking_key_problem(key) is None]
    odd = [key for key in keys if tracking_key_problem(key) is not None]
    state = CourierState(context.resources.mongo.get_database())
    courier = getattr(context.resources, binding.resource_key)
    if good and not config.force:
        _stop_if_paused(flow, state)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = (
        fetch_to_completion(courier.client(flow, state), good, ignore_stored_pause=config.force)
        if good
        else FetchResult(records=[])
    )
    fetch_seconds = time.perf_counter() - started
    kill_point("after_fetch")
    fetch_cpu_seconds = time.process_time() - cpu_started
    records = result.records + _odd_key_records(odd)
    frame = pd.DataFrame([record.__dict__ for record in records])
    if frame.empty:
        frame = pd.DataFrame(columns=list(FetchRecord.__dataclass_fields__))
    frame["state"] = frame["state"].astype(str)
    frame.insert(0, "flow", flow.key)
    frame.insert(1, "run_id", context.run_id)
    frame["fetched_at"] = pd.to_datetime(frame["fetched_at"], utc=True)
    stats = result.stats
    latencies = frame["latency_ms"].dropna()
    states = Counter(frame["state"])
    metadata: dict[str, Any] = {
        "flow": flow.key,
        "keys_asked": len(good),
        "odd_keys": len(odd),
        **{f"keys_{name}": states.get(name, 0) for name in (s.value for s in FetchState)},
        "requests": stats.requests,
        "retries": stats.retries,
        "rate_limited_answers": stats.rate_limited,
        "logins": stats.logins,
        "batches_failed": stats.batches_failed,
        "batches_deferred": stats.batches_deferred,
        "fetch_seconds": round(fetch_seconds, 3),
        # CPU of this process while asking: what the client itself costs per request
        "fetch_cpu_seconds": round(fetch_cpu_seconds, 3),
        "latency_ms_p50": round(float(latencies.median()), 1) if len(latencies) else 0.0,
        "latency_ms_p99": round(float(latencies.quantile(0.99)), 1) if len(latencies) else 0.0,
    }
    if stats.paused_until:
        metadata["courier_paused_until"] = stats.paused_until.isoformat()
        context.log.warning(f"{flow.courier_label} paused until {stats.paused_until.isoformat()}")
    return Output(frame, metadata=metadata)


@asset(
    group_name=GROUP,
    partitions_def=flow_partitions,
    io_manager_key=IO_MANAGER,
    kinds={"pandas", "parquet"},
    description="Each selected order's answer mapped onto a canonical status (SPEC §5), "
    "with the alerts it raised.",
)
def status_updates(
    context: AssetExecutionContext,
    pending_orders: pd.DataFrame,
    raw_courier_responses: pd.DataFrame,
) -> Output[pd.DataFrame]:
    flow = _flow(context)
    started = time.perf_counter()
    frame = interpret_answers(
        pending_orders, raw_courier_responses, COURIERS[flow.key].interpret, datetime.now(UTC)
    )
    outcomes = Counter(frame["outcome"])
    mapped = Counter(frame["status"].dropna())
    unmapped = Counter(frame.loc[frame["outcome"] == "unmapped", "courier_status"].fillna("?"))
    return Output(
        frame,
        metadata={
            "flow": flow.key,
            **{f"outcome_{name}": count for name, count in sorted(outcomes.items())},
            "mapped_statuses": MetadataValue.json(dict(sorted(mapped.items()))),
            "unmapped_raw_statuses": MetadataValue.json(dict(unmapped.most_common(20))),
            "alerts": int(frame["alert"].notna().sum()),
            "seconds": round(time.perf_counter() - started, 3),
        },
    )


WRITE_COLUMNS = [
    "order_oid",
    "order_id",
    "tracking_key",
    "outcome",
    "action",
    "from_status",
    "to_status",
    "events",
    "alert",
]


NO_REJECTED_WRITES = "no_rejected_writes"


@asset(
    group_name=GROUP,
    partitions_def=flow_partitions,
    io_manager_key=IO_MANAGER,
    kinds={"mongodb", "pandas"},
    check_specs=[
        AssetCheckSpec(
            NO_REJECTED_WRITES,
            asset="order_status_writes",
            description="Fails when MongoDB rejected some of the run's updates (those orders "
            "stay due and are named in the run's alert log).",
        )
    ],
    description="The MongoDB write (SPEC §6): statuses moved forward only, polls recorded, "
    "orderTracking history appended once; one row per selected order saying what happened.",
)
def order_status_writes(
    context: AssetExecutionContext, status_updates: pd.DataFrame, mongo: MongoResource
) -> Iterator[Output[pd.DataFrame] | AssetCheckResult]:
    flow = _flow(context)
    now = datetime.now(UTC)
    with _Measured() as measured:
        db = mongo.get_database()
        catalogue = StatusCatalogue.load(db)
        plan = plan_writes(polled_orders(status_updates), catalogue, flow.key, now)
        report = apply_plan(db, plan, catalogue)
    kill_point("after_write")
    decisions = pd.DataFrame(
        [
            {
                "action": decision.action.value,
                "from_status": decision.from_status,
                "to_status": decision.to_status,
                "events": ",".join(decision.events),
                "decision_alert": decision.alert,
            }
            for decision in settle(plan, report)
        ]
    )
    frame = status_updates[["order_oid", "order_id", "tracking_key", "outcome", "alert"]].copy()
    if not decisions.empty:
        frame = pd.concat([frame.reset_index(drop=True), decisions], axis=1)
        frame["alert"] = frame["decision_alert"].combine_first(frame["alert"])
        frame = frame.drop(columns=["decision_alert"])
    frame = frame.reindex(columns=WRITE_COLUMNS)
    for rejected in report.rejected:
        context.log.error(f"MongoDB rejected an update: {rejected}")
    summary = summarise(status_updates, frame)
    yield Output(
        frame,
        metadata={
            "flow": flow.key,
            **summary,
            "updated_per_status": MetadataValue.json(summary_per_status(frame)),
            "orders_matched": report.orders_matched,
            "orders_modified": report.orders_modified,
            "order_tracking_upserted": report.tracking_upserted,
            "order_tracking_modified": report.tracking_modified,
            "order_tracking_synced": report.tracking_synced,
            "rejected_updates": len(report.rejected),
            "bulk_writes": report.bulk_calls,
            **measured.metadata(),
        },
    )
    yield AssetCheckResult(
        check_name=NO_REJECTED_WRITES,
        passed=not report.rejected,
        severity=AssetCheckSeverity.ERROR,
        metadata={"rejected": len(report.rejected)},
        description="; ".join(map(str, report.rejected[:5])) or "MongoDB applied every update",
    )


def summary_per_status(writes: pd.DataFrame) -> dict[str, int]:
    changed = writes[writes["action"] == Action.STATUS_CHANGED.value]
    return {str(k): int(v) for k, v in sorted(Counter(changed["to_status"]).items())}


def summarise(updates: pd.DataFrame, writes: pd.DataFrame) -> dict[str, int]:
    """The per-flow figures of the run summary (make run, the email, the metadata)."""
    outcomes = Counter(updates["outcome"])
    actions = Counter(writes["action"])
    return {
        "selected": len(updates),
        "polled": sum(
            outcomes.get(o, 0) for o in ("mapped", "no_change", "unmapped", "reference_mismatch")
        ),
        "updated": actions.get(Action.STATUS_CHANGED.value, 0),
        "no_change": actions.get(Action.POLL_RECORDED.value, 0),
        "refused": actions.get(Action.REFUSED.value, 0),
        "unmapped": outcomes.get("unmapped", 0),
        "reference_mismatch": outcomes.get("reference_mismatch", 0),
        "not_found": outcomes.get("not_found", 0),
        "failed": outcomes.get("failed", 0),
        "deferred": outcomes.get("deferred", 0),
    }


TRACKING_ASSETS = [pending_orders, raw_courier_responses, status_updates, order_status_writes]
