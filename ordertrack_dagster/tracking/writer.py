"""Contract §6, the write path: from the mapped rows to the run's report, in one place.

`write_statuses` is the `order_status_writes` step: it writes the orders not written yet for
this fetch and reports the whole run (its table and metadata). `write_updates` writes mapped
rows one bulk's worth at a time: it plans them (`plan.py`, pure), sends the plan as a few
bulk writes (`apply_plan`: one operation per polled order), brings orderTracking to the
orders (`sync_order_tracking`) and settles the decisions by what MongoDB did (`settle`).
The fetch's streamed writes (`streaming.py`) call it too. Each written part's decisions are
recorded at once (in `ordertrack_streamed`), so a later write of the run reports them
instead of writing them again (`written_earlier`; `discard` lets them go).

orderTracking follows the order. Every write that leaves the order's status differing from
the one orderTracking was last brought to marks the order (in the same update);
`sync_order_tracking` then brings each marked order's orderTracking to the order's *stored*
status and clears the mark. A crash between the two bulks leaves the mark, so the next run
(of any flow) repairs it; an order whose status another system changed (cancelled, then
rebooked) converges on its next poll. orderTracking never takes a version older than its
own, and the mark is cleared only while the order is still at the version synced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from bson import ObjectId
from dagster import MetadataValue
from pymongo import UpdateOne
from pymongo.database import Database
from pymongo.errors import PyMongoError

from ordertrack_dagster.flows import Flow
from ordertrack_dagster.killpoints import kill_point
from ordertrack_dagster.markers import Event
from ordertrack_dagster.resources.mongo import BULK_CHUNK, STREAMED, BulkLog, Rejected, bulk_update
from ordertrack_dagster.run_summary import summarise, summary_per_status
from ordertrack_dagster.security.redaction import redact
from ordertrack_dagster.tables import WRITE_COLUMNS, Action
from ordertrack_dagster.tracking.metadata import Measured, Table, detection_delay_metadata
from ordertrack_dagster.tracking.plan import (
    TRACKING_DUE_FIELD,
    Decision,
    StatusCatalogue,
    WritePlan,
    follow_op,
    plan_writes,
    polled_orders,
    synced_op,
)


@dataclass
class WriteReport(BulkLog):
    """What MongoDB said: counts, round trips and the operations it rejected."""

    orders_matched: int = 0
    orders_modified: int = 0
    tracking_upserted: int = 0
    tracking_modified: int = 0
    tracking_synced: int = 0
    #: orders whose planned status change MongoDB applied (read back after the write)
    applied: set[ObjectId] = field(default_factory=set)
    #: the plan's own order updates MongoDB rejected, by order (`rejected` also lists the
    #: orderTracking writes and the clears of its mark, which leave the order's update applied)
    rejected_updates: dict[ObjectId, Rejected] = field(default_factory=dict)


def write_statuses(
    db: Database, updates: pd.DataFrame, flow: Flow, fetch_run_id: str, log: logging.Logger
) -> Table:
    """`order_status_writes`: the MongoDB write (contract §6), one row per selected order saying
    what happened to it. Orders already written for this fetch (`fetch_run_id`: the run that
    fetched these answers), by its streamed writes or an earlier attempt of this step, are
    reported, not written again; each part written here is recorded the same way
    (let go once this table is stored: `discard`)."""
    with Measured() as measured:
        earlier = written_earlier(db, fetch_run_id)
        rest = updates[~updates["order_oid"].isin(earlier.decisions)]
        decided, report = write_updates(db, rest, flow, StatusCatalogue.load(db), fetch_run_id)
        kill_point("after_write")
    report = added(earlier.report, report)
    by_order = earlier.decisions | {str(d.order_oid): d for d in decided}
    decisions = pd.DataFrame(
        [
            {
                "action": decision.action.value,
                "from_status": decision.from_status,
                "to_status": decision.to_status,
                "events": ",".join(decision.events),
                "decision_alert": decision.alert,
                "written_at": decision.written_at,
            }
            for decision in (by_order[oid] for oid in updates["order_oid"])
        ]
    )
    frame = updates[["order_oid", "order_id", "tracking_key", "outcome", "alert", "event_time"]]
    frame = frame.copy()
    if not decisions.empty:
        frame = pd.concat([frame.reset_index(drop=True), decisions], axis=1)
        frame["alert"] = frame["decision_alert"].combine_first(frame["alert"])
        frame = frame.drop(columns=["decision_alert"])
    frame = frame.reindex(columns=WRITE_COLUMNS)
    frame["written_at"] = pd.to_datetime(frame["written_at"], utc=True)
    for rejected in report.rejected:
        log.error(f"MongoDB rejected an update: {rejected}")
    return Table(frame, _write_metadata(flow, updates, frame, report, measured))


def _write_metadata(
    flow: Flow,
    updates: pd.DataFrame,
    writes: pd.DataFrame,
    report: WriteReport,
    measured: Measured,
) -> dict[str, Any]:
    """`order_status_writes`: the run summary, its detection delay and what MongoDB said."""
    return {
        "flow": flow.key,
        **summarise(updates, writes),
        **detection_delay_metadata(writes),
        "updated_per_status": MetadataValue.json(summary_per_status(writes)),
        "orders_matched": report.orders_matched,
        "orders_modified": report.orders_modified,
        "order_tracking_upserted": report.tracking_upserted,
        "order_tracking_modified": report.tracking_modified,
        "order_tracking_synced": report.tracking_synced,
        "rejected_updates": len(report.rejected),
        "bulk_writes": report.bulk_calls,
        **measured.metadata(),
    }


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
    run_id: str,
    after_part: Callable[[list[Decision]], None] | None = None,
) -> tuple[list[Decision], WriteReport]:
    """Plan and apply the writes of mapped rows, one bulk's worth at a time (a plan of a
    whole cap's operations at once costs a run its largest share of memory); the decisions
    as MongoDB settled them, and the report of all parts. Each part's decisions are recorded
    under `run_id` (the run that fetched the answers) as soon as it is written, and then
    `after_part` hears of them."""
    decisions: list[Decision] = []
    total = WriteReport()
    # an empty part still syncs orderTracking: every run repairs what a crash left marked
    for start in range(0, max(len(updates), 1), BULK_CHUNK):
        part = updates.iloc[start : start + BULK_CHUNK]
        plan = plan_writes(polled_orders(part), catalogue, flow.key, datetime.now(UTC))
        report = apply_plan(db, plan, catalogue)
        settled = settle(plan, report)
        _record_part(db, flow.key, run_id, settled, report)
        if after_part is not None:
            after_part(settled)
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


def apply_plan(db: Database, plan: WritePlan, catalogue: StatusCatalogue) -> WriteReport:
    """Send the plan as chunked unordered bulk writes, then bring orderTracking to the orders.

    Which planned status changes MongoDB applied is read back, not assumed: a concurrent run
    or a rejected operation leaves some undone, and the run's figures must say so.
    """
    report = WriteReport()
    orders = db["orders"]
    report.orders_matched, report.orders_modified, _ = bulk_update(orders, plan.order_ops, report)
    report.rejected_updates = {r.key: r for r in report.rejected}
    kill_point("between_bulks")
    stored = sync_order_tracking(db, catalogue, report)
    unseen = [oid for oid in plan.changes if oid not in stored]
    for start in range(0, len(unseen), BULK_CHUNK):  # changed, and already synced by another run
        chunk = unseen[start : start + BULK_CHUNK]
        for doc in orders.find({"_id": {"$in": chunk}}, {"order_status": 1}):
            stored[doc["_id"]] = doc.get("order_status")
    report.applied = {oid for oid, new in plan.changes.items() if stored.get(oid) == new}
    return report


def sync_order_tracking(
    db: Database, catalogue: StatusCatalogue, report: WriteReport
) -> dict[ObjectId, Any]:
    """Bring the orderTracking of every marked order to the order's stored status.

    Returns the status read per marked order. The mark is cleared only after orderTracking
    was written, and only if the order is still at the version read (`last_tracking_time`,
    which moves on with every new status): a sync that another writer's newer version
    overtook leaves the mark, so the next sync brings orderTracking to that version.
    """
    orders = db["orders"]
    projection = {"order_status": 1, "last_tracking_time": 1, TRACKING_DUE_FIELD: 1}
    marked = orders.find({TRACKING_DUE_FIELD: {"$exists": True}}, projection, batch_size=BULK_CHUNK)
    stored: dict[ObjectId, Any] = {}
    follow: list[UpdateOne] = []
    clears: dict[ObjectId, UpdateOne] = {}
    for doc in marked:
        oid, status_id, due = doc["_id"], doc.get("order_status"), doc[TRACKING_DUE_FIELD]
        stored[oid] = status_id
        status = catalogue.name_of(status_id)
        version = doc.get("last_tracking_time")
        if status is not None:
            follow.append(follow_op(oid, status, due, version or due))
        read = {"order_status": status_id, "last_tracking_time": version, TRACKING_DUE_FIELD: due}
        clears[oid] = synced_op(oid, read)
    _, report.tracking_modified, report.tracking_upserted = bulk_update(
        db["orderTracking"], follow, report
    )
    failed = {r.key for r in report.rejected if r.collection == "orderTracking"}
    done = [op for oid, op in clears.items() if oid not in failed]
    bulk_update(orders, done, report)
    report.tracking_synced = len(done)
    return stored


def settle(plan: WritePlan, report: WriteReport) -> list[Decision]:
    """The plan's decisions corrected by what MongoDB did: a rejected update, or a status
    change the stored document no longer allowed, is not counted as done."""
    settled = []
    for decision in plan.decisions:
        problem = report.rejected_updates.get(decision.order_oid)
        if problem is not None:
            alert = (
                f"MongoDB rejected the update (error code {problem.code}), the order stays "
                f"due: {problem.error}"
            )
            settled.append(replace(decision, action=Action.REJECTED, events=(), alert=alert))
        elif decision.action is Action.STATUS_CHANGED and decision.order_oid not in report.applied:
            alert = (
                f"move {decision.from_status!r} -> {decision.to_status!r} not applied: the "
                "stored status no longer allowed it (changed by another run)"
            )
            settled.append(replace(decision, action=Action.REFUSED, events=(), alert=alert))
        else:
            settled.append(decision)
    return settled


def _record_part(
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
