"""Reading the tracking history (every run's Parquet output on S3) as pandas DataFrames.

The IO manager keeps one object per run under
`<prefix>/<asset>/flow=<flow>/date=<YYYY-MM-DD>/<run_id>.parquet`. Readers list one prefix
per day of the range asked for, so a week's question costs seven listings whatever the
bucket holds. Nothing here needs Dagster: an analyst can call it from a notebook with the
AWS_* variables set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any

import boto3
import pandas as pd
import pyarrow as pa

from ordertrack_dagster.resources.s3 import history_day_prefix, read_parquet_object
from ordertrack_dagster.tables import TABLE_COLUMNS

DEFAULT_PREFIX = "ordertrack"

#: Column names of each stored tracking asset, as the tracking tables' schema names them.
HISTORY_COLUMNS = TABLE_COLUMNS
HISTORY_ASSETS = tuple(HISTORY_COLUMNS)

_TIMESTAMP = pa.timestamp("us", tz="UTC")
# Only the columns that are not text; a run whose column is all null stores it untyped,
# and these types let every run of an asset be read as one table.
_COLUMN_TYPES: dict[str, pa.DataType] = {
    "order_status": pa.int64(),
    "current_status_id": pa.int64(),
    "batch": pa.int64(),
    "http_status": pa.int64(),
    "attempts": pa.int64(),
    "latency_ms": pa.float64(),
    "stop_tracking": pa.bool_(),
    "booked_at": _TIMESTAMP,
    "last_tracking_time": _TIMESTAMP,
    "fetched_at": _TIMESTAMP,
    "event_time": _TIMESTAMP,
    "status_changed_at": _TIMESTAMP,
    "written_at": _TIMESTAMP,
}


def history_schema(asset: str) -> pa.Schema:
    """The Arrow schema of one stored tracking asset (its columns as the writer names them)."""
    try:
        columns = HISTORY_COLUMNS[asset]
    except KeyError:
        raise ValueError(f"{asset!r} has no history; known: {', '.join(HISTORY_ASSETS)}") from None
    return pa.schema([(name, _COLUMN_TYPES.get(name, pa.string())) for name in columns])


DateLike = date | str


def as_date(value: DateLike) -> date:
    """A day from a date, a datetime or an ISO text such as "2024-09-22"."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(value)


def days(start: DateLike, end: DateLike) -> list[date]:
    """Every day from `start` to `end`, both included."""
    first, last = as_date(start), as_date(end)
    if last < first:
        raise ValueError(f"end {last} is before start {first}")
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]


def _env(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


@dataclass(frozen=True)
class HistoryObject:
    """One run's stored output of one asset."""

    key: str
    run_date: date
    run_id: str
    stored_at: datetime


@dataclass(frozen=True)
class HistoryStore:
    """Where the history lives: a boto3 S3 client, the bucket and the key prefix."""

    client: Any
    bucket: str
    prefix: str = DEFAULT_PREFIX

    @classmethod
    def from_env(
        cls, s3_client: Any = None, bucket: str | None = None, prefix: str = DEFAULT_PREFIX
    ) -> HistoryStore:
        """Fill what is not given from AWS_ENDPOINT_URL, AWS_REGION and AWS_S3_BUCKET
        (boto3 reads the credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)."""
        bucket = bucket or _env("AWS_S3_BUCKET")
        if not bucket:
            raise ValueError("no bucket: pass bucket= or set AWS_S3_BUCKET")
        client = s3_client or boto3.client(
            "s3", endpoint_url=_env("AWS_ENDPOINT_URL"), region_name=_env("AWS_REGION")
        )
        return cls(client=client, bucket=bucket, prefix=prefix)

    def objects(self, asset: str, flow: str, start: DateLike, end: DateLike) -> list[HistoryObject]:
        """The runs stored for `flow` between `start` and `end` (UTC run days, inclusive),
        oldest first."""
        history_schema(asset)  # an unknown asset is a mistake, not an empty answer
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        for day in days(start, end):
            day_prefix = history_day_prefix(self.prefix, asset, flow, day)
            for page in paginator.paginate(Bucket=self.bucket, Prefix=day_prefix):
                found += [
                    HistoryObject(
                        key=item["Key"],
                        run_date=day,
                        run_id=PurePosixPath(item["Key"]).stem,
                        stored_at=item["LastModified"],
                    )
                    for item in page.get("Contents", [])
                    if item["Key"].endswith(".parquet")
                ]
        return sorted(found, key=lambda item: (item.stored_at, item.key))

    def read(self, asset: str, flow: str, start: DateLike, end: DateLike) -> pd.DataFrame:
        """Every row of every run in the range, each with `flow`, `run_date`, `run_id` first
        and `stored_at` (when the run wrote it) and `s3_key` last."""
        frames = []
        for item in self.objects(asset, flow, start, end):
            frame = read_parquet_object(self.client, self.bucket, item.key)
            frames.append(_with_run_columns(frame, flow, item))
        if not frames:
            empty = history_schema(asset).empty_table().to_pandas()
            return _with_run_columns(empty, flow, None)
        return pd.concat(frames, ignore_index=True)


def _with_run_columns(frame: pd.DataFrame, flow: str, item: HistoryObject | None) -> pd.DataFrame:
    run_columns = {
        "flow": flow,
        "run_date": item.run_date if item else None,
        "run_id": item.run_id if item else None,
    }
    frame = frame.drop(columns=[name for name in run_columns if name in frame.columns])
    for position, (name, value) in enumerate(run_columns.items()):
        frame.insert(position, name, value)
    frame["stored_at"] = pd.Timestamp(item.stored_at) if item else pd.NaT
    frame["s3_key"] = item.key if item else None
    return frame


def read_history(
    asset: str,
    flow: str,
    start: DateLike,
    end: DateLike,
    *,
    s3_client: Any = None,
    bucket: str | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> pd.DataFrame:
    """Every stored run of a tracking asset for one flow between two UTC run days (inclusive).

    `asset` is one of pending_orders, raw_courier_responses, status_updates,
    order_status_writes. Without `s3_client` / `bucket` the AWS_* variables are used.
    """
    store = HistoryStore.from_env(s3_client, bucket, prefix)
    return store.read(asset, flow, start, end)


def read_raw_responses(
    flow: str, start: DateLike, end: DateLike, *, parse_json: bool = False, **where: Any
) -> pd.DataFrame:
    """What the courier answered, one row per key asked per run; with `parse_json` an
    `answer` column holds each `raw` JSON text parsed (None where there was no answer).
    `where` (s3_client, bucket, prefix) is read_history's own."""
    frame = read_history("raw_courier_responses", flow, start, end, **where)
    if parse_json:
        frame["answer"] = [
            json.loads(text) if isinstance(text, str) else None for text in frame["raw"]
        ]
    return frame


def read_status_updates(flow: str, start: DateLike, end: DateLike, **where: Any) -> pd.DataFrame:
    """Each selected order's answer as mapped (outcome, courier_status, status, ...) per run.
    `where` (s3_client, bucket, prefix) is read_history's own."""
    return read_history("status_updates", flow, start, end, **where)


UNMAPPED_COLUMNS = ["courier_status", "order_id", "tracking_key", "run_id", "seen_at"]


def unmapped_statuses(flow: str, start: DateLike, end: DateLike, **where: Any) -> pd.DataFrame:
    """The raw statuses the courier sent that no mapping table knows, with the orders that
    carried them: one row per order per run, oldest first (`seen_at` = when the run stored it).
    `where` (s3_client, bucket, prefix) is read_history's own."""
    updates = read_status_updates(flow, start, end, **where)
    unmapped = updates[updates["outcome"] == "unmapped"].rename(columns={"stored_at": "seen_at"})
    return unmapped[UNMAPPED_COLUMNS].reset_index(drop=True)
