"""Answers kept while a run asks the courier, so a crash mid-run loses none of them.

Every `ORDERTRACK_KEEP_ANSWERS_EVERY_SECONDS` (20 s) while the fetch goes on, it hands the
records finished since over (`couriers.engine`); the answered ones go into
`ordertrack_fetched`, in documents of at most 8 MB. A fetch shorter than that keeps nothing:
asking again costs less than keeping. A later run of the flow
(a step retry, a re-execution, the next scheduled or drain run) takes an answer from there
instead of asking the courier again, when the courier gave it after the order's last
recorded poll and not longer ago than a dead run can hold the flow. Once the run's write
is done its chunks are deleted; the chunks of a run that died expire after a day (a TTL
index, longer than any flow's reuse window).

Only answers are kept: a key the courier did not answer, or that failed, is asked again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta

import pandas as pd
from pymongo.database import Database
from pymongo.errors import PyMongoError

from ordertrack_dagster.flows import Flow, max_runtime, schedule_interval
from ordertrack_dagster.killpoints import kill_point
from ordertrack_dagster.records import KEPT_ANSWER_BATCH, FetchRecord, FetchState
from ordertrack_dagster.resources.mongo import FETCHED

KEEP_EVERY_ENV = "ORDERTRACK_KEEP_ANSWERS_EVERY_SECONDS"
DEFAULT_KEEP_EVERY = timedelta(seconds=20)
#: A kept document's answers take at most this much text (MongoDB's limit is 16 MB).
MAX_DOCUMENT_TEXT = 8 * 1024 * 1024


def keep_every(env: Mapping[str, str] = os.environ) -> timedelta:
    """How often a fetch keeps its new answers: more often costs MongoDB writes, less often
    loses more of a run killed mid-fetch."""
    text = env.get(KEEP_EVERY_ENV, "").strip()
    if not text:
        return DEFAULT_KEEP_EVERY
    seconds = float(text)
    if not seconds >= 0:
        raise ValueError(f"{KEEP_EVERY_ENV} must be a number of seconds, 0 or more")
    return timedelta(seconds=seconds)


def reuse_window(flow: Flow) -> timedelta:
    """How old a kept answer may be and still stand for asking: a run killed mid-fetch holds
    the flow until it is found dead (its max runtime), and the next tick follows."""
    return max_runtime(flow) + schedule_interval(flow.cron)


class Keeper:
    """The fetch's `keep` callback for one run: stores each chunk's answers, never raises
    (a MongoDB error costs only the crash protection of that chunk, and is logged)."""

    def __init__(self, db: Database, flow: Flow, run_id: str, log: logging.Logger) -> None:
        self._collection = db[FETCHED]
        self._flow = flow
        self._run_id = run_id
        self._log = log
        self.chunks = 0
        self.failures = 0

    def __call__(self, records: list[FetchRecord]) -> None:
        answers = [asdict(r) for r in records if r.state is FetchState.ANSWERED]
        for part in _parts(answers):
            try:
                self._collection.insert_one(
                    {
                        "flow": self._flow.key,
                        "run_id": self._run_id,
                        "created_at": datetime.now(UTC),
                        "records": part,
                    }
                )
            except PyMongoError as error:
                self.failures += 1
                self._log.warning(f"{len(part)} answers not kept against a crash: {error}")
                continue
            self.chunks += 1
            kill_point("after_keep")


def _parts(answers: list[dict]) -> Iterator[list[dict]]:
    """The answers in runs whose text stays under MAX_DOCUMENT_TEXT."""
    part: list[dict] = []
    size = 0
    for answer in answers:
        length = len(answer.get("raw") or "") + len(answer.get("error") or "") + 200
        if part and size + length > MAX_DOCUMENT_TEXT:
            yield part
            part, size = [], 0
        part.append(answer)
        size += length
    if part:
        yield part


def kept_answers(
    db: Database, flow: Flow, pending: pd.DataFrame, now: datetime
) -> dict[str, FetchRecord]:
    """Kept answers that stand for asking again, by tracking key: for a key this run
    selected, newer than its order's last recorded poll and within `reuse_window`. Each is
    marked as not sent by this run (batch `KEPT_ANSWER_BATCH`, no latency, no attempt)."""
    keys = set(pending["tracking_key"])
    polled_at = {
        key: (None if pd.isna(at) else at.to_pydatetime())
        for key, at in zip(pending["tracking_key"], pending["last_tracking_time"], strict=True)
    }
    found: dict[str, FetchRecord] = {}
    oldest = now - reuse_window(flow)
    cursor = db[FETCHED].find({"flow": flow.key, "created_at": {"$gte": oldest}}, {"records": 1})
    for chunk in cursor:
        for fields in chunk.get("records") or []:
            record = _record(fields)
            last = polled_at.get(record.tracking_key) or oldest
            if record.tracking_key not in keys or record.fetched_at <= max(last, oldest):
                continue
            known = found.get(record.tracking_key)
            if known is None or record.fetched_at > known.fetched_at:
                found[record.tracking_key] = replace(
                    record, batch=KEPT_ANSWER_BATCH, latency_ms=None, attempts=0
                )
    return found


def _record(fields: dict) -> FetchRecord:
    fetched_at = fields["fetched_at"]
    if fetched_at.tzinfo is None:  # a client without tz_aware reads UTC as naive
        fetched_at = fetched_at.replace(tzinfo=UTC)
    return FetchRecord(**{**fields, "state": FetchState(fields["state"]), "fetched_at": fetched_at})


def discard(db: Database, run_ids: Iterable[str]) -> None:
    """The runs' answers are written: their chunks are no longer needed."""
    db[FETCHED].delete_many({"run_id": {"$in": list(run_ids)}})
