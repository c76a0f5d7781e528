"""Statuses written while the fetch goes on, so a long fetch (a courier's rate limit, a slow
courier) does not leave every write to its end, and a run killed mid-fetch has written what
it got.

Every `ORDERTRACK_STREAM_WRITES_EVERY_SECONDS` (20 s) the fetch hands over the answers it
got since (`couriers.engine`); they are mapped and written right away by the functions the
`order_status_writes` step uses, and what each written part decided goes into
`ordertrack_streamed`. The write step then writes only the orders not written yet (not
answered, failed, deferred, and the answers of the last seconds), recording its own parts
the same way, and reports the run as a whole; once its table is stored the run's documents
are deleted (a dead run's expire after a day). A fetch shorter than the interval streams
nothing: the write step writes everything.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta

import pandas as pd
from bson import ObjectId
from pymongo.database import Database
from pymongo.errors import PyMongoError

from ordertrack_dagster.couriers import COURIERS
from ordertrack_dagster.flows import Flow
from ordertrack_dagster.killpoints import kill_point
from ordertrack_dagster.markers import Event
from ordertrack_dagster.records import FetchRecord, FetchState
from ordertrack_dagster.resources.mongo import BULK_CHUNK, STREAMED, Rejected
from ordertrack_dagster.security.redaction import redact
from ordertrack_dagster.tables import Action
from ordertrack_dagster.tracking.mapping import interpret_answers, polled_orders
from ordertrack_dagster.tracking.writer import (
    Decision,
    StatusCatalogue,
    WriteReport,
    apply_plan,
    plan_writes,
    settle,
)

STREAM_EVERY_ENV = "ORDERTRACK_STREAM_WRITES_EVERY_SECONDS"
DEFAULT_STREAM_EVERY = timedelta(seconds=20)
#: The longest fetch time box (the fallback flow's): with a longer interval a fetch would
#: write nothing while it goes on.
MAX_STREAM_EVERY = timedelta(hours=3)


def stream_every(env: Mapping[str, str] = os.environ) -> timedelta:
    """How often a fetch writes the answers it got: more often costs more, smaller MongoDB
    writes; less often leaves more unwritten when a run is killed mid-fetch."""
    text = env.get(STREAM_EVERY_ENV, "").strip()
    if not text:
        return DEFAULT_STREAM_EVERY
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_STREAM_EVERY.total_seconds():
        raise ValueError(
            f"{STREAM_EVERY_ENV}={text!r}: expected a number of seconds from 0 to "
            f"{MAX_STREAM_EVERY.total_seconds():g}"
        )
    return timedelta(seconds=seconds)


#: The WriteReport counters a streamed write adds to the run's.
_COUNTERS = (
    "bulk_calls",
    "orders_matched",
    "orders_modified",
    "tracking_upserted",
    "tracking_modified",
    "tracking_synced",
)


def write_updates(
    db: Database,
    updates: pd.DataFrame,
    flow: Flow,
    catalogue: StatusCatalogue,
    after_part: Callable[[list[Decision], WriteReport], None] | None = None,
) -> tuple[list[Decision], WriteReport]:
    """Plan and apply the writes of mapped rows, one bulk's worth at a time (a plan of a
    whole cap's operations at once costs a run its largest share of memory); the decisions
    as MongoDB settled them, and the report of all parts. `after_part` hears of each part as
    soon as it is written."""
    decisions: list[Decision] = []
    total = WriteReport()
    # an empty part still syncs orderTracking: every run repairs what a crash left marked
    for start in range(0, max(len(updates), 1), BULK_CHUNK):
        part = updates.iloc[start : start + BULK_CHUNK]
        plan = plan_writes(polled_orders(part), catalogue, flow.key, datetime.now(UTC))
        report = apply_plan(db, plan, catalogue)
        settled = settle(plan, report)
        if after_part is not None:
            after_part(settled, report)
        decisions += settled
        total = added(total, report)
    return decisions, total


def added(report: WriteReport, more: WriteReport) -> WriteReport:
    """`report` with the counters and rejections of `more` added (the figures of a run
    written in parts)."""
    for name in _COUNTERS:
        setattr(report, name, getattr(report, name) + getattr(more, name))
    report.rejected = report.rejected + more.rejected
    return report


@dataclass
class Written:
    """What the streamed writes of a run decided, and the counters of their report."""

    decisions: dict[str, Decision] = field(default_factory=dict)  # by order oid (hex)
    report: WriteReport = field(default_factory=WriteReport)


class StreamedWriter:
    """The fetch's `stream` callback for one run: writes the statuses of new answers. It never
    raises: what it could not write, the write step writes."""

    def __init__(
        self, db: Database, flow: Flow, pending: pd.DataFrame, run_id: str, log: logging.Logger
    ) -> None:
        self._db = db
        self._flow = flow
        self._pending = pending
        self._run_id = run_id
        self._log = log
        self._catalogue: StatusCatalogue | None = None
        self.written = 0

    def __call__(self, records: list[FetchRecord]) -> None:
        answered = [r for r in records if r.state is FetchState.ANSWERED]
        if not answered:
            return
        try:
            self._write(answered)
        except Exception as error:  # noqa: BLE001 - the write step writes them instead
            self._log.warning(
                f"{len(answered)} answers not written while fetching "
                f"({type(error).__name__}: {redact(str(error))[:300]}); the write step will"
            )

    def _write(self, answered: list[FetchRecord]) -> None:
        if self._catalogue is None:
            self._catalogue = StatusCatalogue.load(self._db)
        keys = {r.tracking_key for r in answered}
        orders = self._pending[self._pending["tracking_key"].isin(keys)]
        raw = pd.DataFrame([r.__dict__ for r in answered])
        updates = interpret_answers(
            orders, raw, COURIERS[self._flow.key].interpret, datetime.now(UTC)
        )
        write_updates(self._db, updates, self._flow, self._catalogue, after_part=self._record)
        kill_point("after_streamed_write")

    def _record(self, decisions: list[Decision], report: WriteReport) -> None:
        record_part(self._db, self._flow.key, self._run_id, decisions, report)
        self.written += len(decisions)


def record_part(
    db: Database, flow_key: str, run_id: str, decisions: list[Decision], report: WriteReport
) -> None:
    """Store what one written part of a run decided, at once: a later write of the run (the
    write step after the fetch's, or its re-execution) skips and reports those orders. One
    document per part stays far below MongoDB's document limit."""
    db[STREAMED].insert_one(
        {
            "flow": flow_key,
            "run_id": run_id,
            "created_at": datetime.now(UTC),
            "written": [_decision_fields(d) for d in decisions],
            **_report_fields(report),
        }
    )


def written_earlier(db: Database, run_id: str) -> Written:
    """What the run's streamed writes decided (the write step skips those orders)."""
    written = Written()
    for doc in db[STREAMED].find({"run_id": run_id}):
        for fields_ in doc["written"]:
            decision = _decision(fields_)
            written.decisions[str(decision.order_oid)] = decision
        written.report = added(written.report, _stored_report(doc))
    return written


def _report_fields(report: WriteReport) -> dict:
    return {
        "counters": {name: getattr(report, name) for name in _COUNTERS},
        "rejected": [asdict(r) | {"key": str(r.key)} for r in report.rejected],
    }


def _stored_report(doc: dict) -> WriteReport:
    """The report `_report_fields` stored (its counters and rejections)."""
    report = WriteReport(rejected=[Rejected(**r) for r in doc.get("rejected") or []])
    for name in _COUNTERS:
        setattr(report, name, int(doc["counters"].get(name, 0)))
    return report


def _decision_fields(decision: Decision) -> dict:
    return {f.name: getattr(decision, f.name) for f in fields(decision)} | {
        "events": [event.value for event in decision.events]
    }


def _decision(stored: dict) -> Decision:
    return Decision(
        order_oid=ObjectId(stored["order_oid"]),
        action=Action(stored["action"]),
        from_status=stored.get("from_status"),
        to_status=stored.get("to_status"),
        events=tuple(Event(e) for e in stored.get("events") or ()),
        alert=stored.get("alert"),
        written_at=stored.get("written_at"),
    )


def discard(db: Database, run_id: str, log: logging.Logger) -> None:
    """The run is written and its table stored: its recorded decisions are no longer needed.
    A failure here fails nothing: they expire within a day."""
    try:
        db[STREAMED].delete_many({"run_id": run_id})
    except PyMongoError as error:
        log.warning(
            f"the run's recorded decisions stay until they expire (within a day): "
            f"{redact(str(error))[:300]}"
        )
