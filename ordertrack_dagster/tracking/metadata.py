"""What each tracking asset records for ops in its metadata, built from its table."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, NamedTuple

import pandas as pd
from dagster import MetadataValue

from ordertrack_dagster.flows import Flow
from ordertrack_dagster.records import FetchResult, FetchState
from ordertrack_dagster.resources.mongo import COMMANDS
from ordertrack_dagster.run_summary import detection_delay_summary
from ordertrack_dagster.tracking.selection import ChosenOrders, OrderQuery


class Table(NamedTuple):
    """One step's output: the stored table and its metadata."""

    frame: pd.DataFrame
    metadata: dict[str, Any]


class Measured:
    """Wall time and MongoDB round trips of one step, for its metadata."""

    def __enter__(self) -> Measured:
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


def snapshot_metadata(
    flow: Flow, frame: pd.DataFrame, query: OrderQuery, measured: Measured
) -> dict[str, Any]:
    """`pending_orders`: how many were selected, how stale the oldest was, by which query."""
    described = query.describe()
    return {
        "flow": flow.key,
        "selected": len(frame),
        "never_tracked": int(frame["last_tracking_time"].isna().sum()),
        "oldest_last_tracking_time": str(frame["last_tracking_time"].min()),
        "filter": MetadataValue.json(described["filter"]),
        "sort": MetadataValue.json(described["sort"]),
        "cap": flow.cap,
        **measured.metadata(),
    }


def chosen_metadata(chosen: ChosenOrders, frame: pd.DataFrame) -> dict[str, Any]:
    """A re-poll: what ops asked for, and which of it the flow does not track (another
    courier, a final status, stopped tracking, outside the buffer period)."""
    found_ids, found_keys = set(frame["order_id"]), set(frame["tracking_key"])
    return {
        "repoll_order_ids": MetadataValue.json(list(chosen.order_ids)),
        "repoll_tracking_keys": MetadataValue.json(list(chosen.tracking_keys)),
        "repoll_not_tracked": MetadataValue.json(
            [i for i in chosen.order_ids if i not in found_ids]
            + [k for k in chosen.tracking_keys if k not in found_keys]
        ),
    }


def fetch_metadata(
    flow: Flow,
    frame: pd.DataFrame,
    result: FetchResult,
    asked: int,
    odd: int,
    seconds: float,
    cpu_seconds: float,
    *,
    written_while_fetching: int = 0,
) -> dict[str, Any]:
    """`raw_courier_responses`: keys per fetch state, requests, retries, pauses and latency,
    and the orders whose status was written while the fetch went on."""
    stats = result.stats
    latencies = frame["latency_ms"].dropna()
    states = Counter(frame["state"])
    metadata: dict[str, Any] = {
        "flow": flow.key,
        "keys_asked": asked,
        "odd_keys": odd,
        "orders_written_while_fetching": written_while_fetching,
        **{f"keys_{name}": states.get(name, 0) for name in (s.value for s in FetchState)},
        "requests": stats.requests,
        "retries": stats.retries,
        "rate_limited_answers": stats.rate_limited,
        "logins": stats.logins,
        "batches_failed": stats.batches_failed,
        "batches_deferred": stats.batches_deferred,
        "fetch_seconds": round(seconds, 3),
        # CPU of this process while asking: what the client itself costs per request
        "fetch_cpu_seconds": round(cpu_seconds, 3),
        "latency_ms_p50": round(float(latencies.median()), 1) if len(latencies) else 0.0,
        "latency_ms_p99": round(float(latencies.quantile(0.99)), 1) if len(latencies) else 0.0,
    }
    if stats.paused_until:
        metadata["courier_paused_until"] = stats.paused_until.isoformat()
    return metadata


def mapping_metadata(flow: Flow, frame: pd.DataFrame, seconds: float) -> dict[str, Any]:
    """`status_updates`: outcomes, the statuses mapped, the raw statuses nobody maps."""
    outcomes = Counter(frame["outcome"])
    mapped = Counter(frame["status"].dropna())
    unmapped = Counter(frame.loc[frame["outcome"] == "unmapped", "courier_status"].fillna("?"))
    return {
        "flow": flow.key,
        **{f"outcome_{name}": count for name, count in sorted(outcomes.items())},
        "mapped_statuses": MetadataValue.json(dict(sorted(mapped.items()))),
        "unmapped_raw_statuses": MetadataValue.json(dict(unmapped.most_common(20))),
        "alerts": int(frame["alert"].notna().sum()),
        "seconds": round(seconds, 3),
    }


def detection_delay_metadata(writes: pd.DataFrame) -> dict[str, Any]:
    """The run's detection delay as numbers Dagster plots (p50, p95, max seconds, changes
    detected) and the same per status reached."""
    summary = detection_delay_summary(writes)
    by_status = summary.pop("by_status", {})
    return summary | {"detection_delay_by_status": MetadataValue.json(by_status)}
