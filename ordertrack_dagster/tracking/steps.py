"""The first three steps of a flow run, one function per tracking asset: each returns its
table and the metadata ops judge the run by. The assets only hand them their inputs; the
fourth, the write, is `writer.write_statuses`."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from dagster import Failure
from pymongo.database import Database

from ordertrack_dagster.couriers import (
    COURIERS,
    FetchOptions,
    blocking_pause,
    describe_pause,
    fetch_to_completion,
)
from ordertrack_dagster.flows import Flow, fetch_time_box
from ordertrack_dagster.killpoints import kill_point
from ordertrack_dagster.polling import STATUS_CHANGED_FIELD
from ordertrack_dagster.records import ODD_KEY_BATCH, FetchRecord, FetchResult, FetchState
from ordertrack_dagster.resources.mongo import DatabaseNotReady, prepare_database
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.tables import SNAPSHOT_COLUMNS
from ordertrack_dagster.tracking import metadata, streaming
from ordertrack_dagster.tracking.mapping import (
    interpret_answers,
    tracking_key_problem,
)
from ordertrack_dagster.tracking.metadata import Table
from ordertrack_dagster.tracking.selection import (
    SNAPSHOT_FIELDS,
    ChosenOrders,
    SelectionPolicy,
    build_query,
    shared_key_holders,
)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return str(value).strip()


def select_pending(
    db: Database, flow: Flow, log: logging.Logger, chosen: ChosenOrders | None = None
) -> Table:
    """`pending_orders`: the orders due in this flow (contract §2), earliest next poll first,
    capped; with `chosen`, only those of them (a re-poll ops asked for)."""
    query = build_query(flow, SelectionPolicy.from_env(), datetime.now(UTC), chosen)
    with metadata.Measured() as measured:
        try:
            warnings = prepare_database(db)
        except DatabaseNotReady as error:
            raise Failure(description=str(error), allow_retries=False) from None
        for warning in warnings:
            log.warning(warning)
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
                "status_changed_at": doc.get(STATUS_CHANGED_FIELD),
            }
            for doc in cursor
        ]
    frame = pd.DataFrame(rows, columns=SNAPSHOT_COLUMNS)
    frame["order_status"] = pd.to_numeric(frame["order_status"], errors="coerce").astype("Int64")
    for column in ("booked_at", "last_tracking_time", "status_changed_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    found = metadata.snapshot_metadata(flow, frame, query, measured)
    if chosen:
        found |= metadata.chosen_metadata(chosen, frame)
    return Table(frame, found)


def _stop_if_paused(flow: Flow, state: SharedState) -> None:
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
    failed, batch = FetchState.FAILED, ODD_KEY_BATCH
    return [
        FetchRecord(key, failed, batch, None, now, None, 0, None, tracking_key_problem(key))
        for key in keys
    ]


#: Text enters pandas' Arrow storage this many rows at a time: one array of 36,000 answers
#: grows its buffer by doubling, and at the end of the fetch that was the run's peak memory.
TEXT_CHUNK = 1_000
#: The record's optional text: a text column in every run's table (not a null-typed one when
#: no key was answered or none failed), so the runs' Parquet objects read as one table.
TEXT_FIELDS = ("raw", "error")


def _text_column(texts: list[str | None]) -> pd.Series:
    """One text column built a chunk at a time (its Arrow chunks are kept)."""
    chunks = [
        pd.Series(texts[start : start + TEXT_CHUNK], dtype="str")
        for start in range(0, len(texts), TEXT_CHUNK)
    ]
    return pd.concat(chunks, ignore_index=True) if chunks else pd.Series(dtype="str")


def fetch_frame(records: list[FetchRecord]) -> pd.DataFrame:
    """`raw_courier_responses`' table: one row per record, its fields as columns."""
    fields = list(FetchRecord.__dataclass_fields__)
    others = [field for field in fields if field not in TEXT_FIELDS]
    frame = pd.DataFrame([[getattr(r, f) for f in others] for r in records], columns=others)
    for field in TEXT_FIELDS:
        frame.insert(fields.index(field), field, _text_column([getattr(r, field) for r in records]))
    frame["state"] = frame["state"].astype(str)
    return frame


def ask_courier(
    db: Database,
    pending: pd.DataFrame,
    flow: Flow,
    courier: Any,
    *,
    force: bool,
    run_id: str,
    log: logging.Logger,
) -> Table:
    """`raw_courier_responses`: one record per tracking key, asked of the flow's courier
    (odd keys are recorded as failed without asking). `courier` is the flow's resource.
    Every 20 s while the fetch goes on, the statuses of its new answers are written
    (`streaming.py`), so a long fetch does not leave every write to its end."""
    state = SharedState(db)
    keys = list(dict.fromkeys(pending["tracking_key"]))
    good = [key for key in keys if tracking_key_problem(key) is None]
    odd = [key for key in keys if tracking_key_problem(key) is not None]
    if good and not force:
        _stop_if_paused(flow, state)
    writer = streaming.StreamedWriter(db, flow, pending, run_id, log, asking=len(good))
    started, cpu_started = time.perf_counter(), time.process_time()
    result = (
        fetch_to_completion(
            courier.client(flow, state),
            good,
            FetchOptions(
                ignore_stored_pause=force,
                time_box=fetch_time_box(flow),
                stream=writer,
                stream_every=streaming.stream_every(),
            ),
        )
        if good
        else FetchResult(records=[])
    )
    fetch_seconds = time.perf_counter() - started
    writer.progress(len(result.records))  # the last records came after the last hand-over
    kill_point("after_fetch")
    fetch_cpu_seconds = time.process_time() - cpu_started
    frame = fetch_frame(result.records + _odd_key_records(odd))
    frame.insert(0, "flow", flow.key)
    frame.insert(1, "run_id", run_id)
    frame["fetched_at"] = pd.to_datetime(frame["fetched_at"], utc=True)
    if result.stats.paused_until:
        log.warning(f"{flow.courier_label} paused until {result.stats.paused_until.isoformat()}")
    if result.stats.budget_unsettled:
        log.warning(
            f"{flow.courier_label}'s request budget was not settled "
            f"({result.stats.budget_unsettled}): what this run reserved and did not send stays "
            "counted until it leaves the window"
        )
    return Table(
        frame,
        metadata.fetch_metadata(
            flow,
            frame,
            result,
            len(good),
            len(odd),
            fetch_seconds,
            fetch_cpu_seconds,
            written_while_fetching=writer.written,
        ),
    )


def map_answers(db: Database, pending: pd.DataFrame, raw: pd.DataFrame, flow: Flow) -> Table:
    """`status_updates`: each selected order's answer mapped onto a canonical status; an answer
    for a key other live orders hold too reaches one order at most."""
    started, now = time.perf_counter(), datetime.now(UTC)
    holders = shared_key_holders(db, flow, now)
    frame = interpret_answers(pending, raw, COURIERS[flow.key].interpret, now, holders)
    return Table(frame, metadata.mapping_metadata(flow, frame, time.perf_counter() - started))
