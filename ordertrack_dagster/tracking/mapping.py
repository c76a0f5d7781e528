"""From the snapshot and the raw answers to one mapped row per selected order (pure).

The tables live in the courier modules; this joins orders to answers, applies the courier's
reader, and turns fetch failures into outcomes that leave the order due for the next run.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Any

import pandas as pd
from bson import ObjectId

from ordertrack_dagster.couriers import Interpreter, implausible_time, read_json_text
from ordertrack_dagster.records import FetchState, Interpretation, OrderContext, Outcome
from ordertrack_dagster.statuses import Canonical
from ordertrack_dagster.tables import UPDATE_COLUMNS
from ordertrack_dagster.tracking.writer import PolledOrder

#: What a tracking key may look like before we put it in a URL or a request body.
VALID_TRACKING_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_/-]{2,39}$")


_FETCH_OUTCOMES = {
    FetchState.NOT_ANSWERED: Outcome.NOT_FOUND,
    FetchState.FAILED: Outcome.FAILED,
    FetchState.DEFERRED: Outcome.DEFERRED,
}


def tracking_key_problem(key: Any) -> str | None:
    """Why a stored AWB or LR cannot be asked about, or None when it is fine."""
    if not isinstance(key, str) or not VALID_TRACKING_KEY.match(key):
        return f"odd tracking key {key!r}: not asked"
    return None


def interpret_answers(
    orders: pd.DataFrame, raw: pd.DataFrame, interpret: Interpreter, now: datetime
) -> pd.DataFrame:
    """One row per selected order: its answer read and mapped, or why there was none."""
    by_key = {row.tracking_key: row for row in raw.itertuples(index=False)}
    readings = [
        (order, _read(order, by_key.get(order.tracking_key), interpret, now))
        for order in orders.itertuples(index=False)
    ]
    rows = []
    for order, reading in _refuse_shared_keys(readings):
        rows.append(
            {
                "order_oid": order.order_oid,
                "order_id": order.order_id,
                "tracking_key": order.tracking_key,
                "current_status_id": order.order_status,
                "booked_at": order.booked_at,
                "outcome": reading.outcome.value,
                "courier_status": reading.courier_status,
                "status": reading.status.value if reading.status else None,
                "event_time": reading.event_time,
                "stop_tracking": reading.stop_tracking,
                "alert": reading.alert,
                "status_changed_at": _stored_time(order, "status_changed_at"),
            }
        )
    frame = pd.DataFrame(rows, columns=UPDATE_COLUMNS)
    for column in ("event_time", "status_changed_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame["current_status_id"] = frame["current_status_id"].astype("Int64")
    return frame


def _refuse_shared_keys(
    readings: list[tuple[Any, Interpretation]],
) -> list[tuple[Any, Interpretation]]:
    """Due orders sharing one AWB or LR get one answer between them: it is applied to none
    of them (a status, and an RTO webhook, for the wrong order is worse than a late one),
    unless the answer itself names its order (Delhivery's ReferenceNo) and so picks one."""
    orders_by_key: dict[str, list[str]] = {}
    for order, _ in readings:
        orders_by_key.setdefault(order.tracking_key, []).append(str(order.order_id))
    shared = {key: ids for key, ids in orders_by_key.items() if len(ids) > 1}
    if not shared:
        return readings
    matched = {
        order.tracking_key
        for order, reading in readings
        if order.tracking_key in shared and reading.outcome is Outcome.REFERENCE_MISMATCH
    }
    result = []
    for order, reading in readings:
        key = order.tracking_key
        if key in shared and key not in matched and reading.outcome.was_read:
            reading = Interpretation(
                Outcome.FAILED,
                alert=f"shared tracking key: {key} is shared by due orders "
                f"{', '.join(shared[key])}: "
                "its answer was applied to none of them",
            )
        result.append((order, reading))
    return result


def _read(order: Any, record: Any, interpret: Interpreter, now: datetime) -> Interpretation:
    if record is None:
        return Interpretation(Outcome.FAILED, alert="no fetch record for this key")
    state = FetchState(record.state)
    if state is not FetchState.ANSWERED:
        return Interpretation(_FETCH_OUTCOMES[state], alert=record.error)
    try:
        answer = read_json_text(record.raw)
    except (TypeError, ValueError, RecursionError):
        return Interpretation(Outcome.FAILED, alert="stored answer is not JSON")
    context = OrderContext(order_id=str(order.order_id), tracking_key=order.tracking_key)
    try:
        reading = interpret(answer, context, now)
    except Exception as error:  # a reader bug or an answer shape nobody foresaw
        return Interpretation(
            Outcome.FAILED, alert=f"could not read the answer: {type(error).__name__}: {error}"
        )
    fetch_note = record.error if isinstance(record.error, str) else None  # NaN when none
    return _with_notes(reading, fetch_note, implausible_time(reading.event_time, now))


def _with_notes(
    reading: Interpretation, fetch_note: str | None, time_problem: str | None
) -> Interpretation:
    """The reading with the fetch's note on this answer (a duplicate resolved) and without a
    courier time nobody can believe (the poll time stands in), both said in the alert."""
    if not (fetch_note or time_problem):
        return reading
    return replace(
        reading,
        event_time=None if time_problem else reading.event_time,
        alert="; ".join(
            filter(None, [reading.alert, fetch_note, time_problem and f"{time_problem}: ignored"])
        ),
    )


def _stored_time(row: Any, column: str) -> datetime | None:
    """A time column of a stored table; None when empty, or absent from a table stored before
    the column existed (a write re-executed on an older run's input)."""
    value = getattr(row, column, None)
    return None if value is None or pd.isna(value) else pd.Timestamp(value).to_pydatetime()


def polled_orders(updates: pd.DataFrame) -> list[PolledOrder]:
    """The writer's view of the mapped rows."""
    orders = []
    for row in updates.itertuples(index=False):
        orders.append(
            PolledOrder(
                order_oid=ObjectId(row.order_oid),
                order_id=str(row.order_id),
                tracking_key=row.tracking_key,
                current_status_id=None
                if pd.isna(row.current_status_id)
                else int(row.current_status_id),
                booked_at=None
                if pd.isna(row.booked_at)
                else pd.Timestamp(row.booked_at).to_pydatetime(),
                outcome=Outcome(row.outcome),
                courier_status=None if pd.isna(row.courier_status) else row.courier_status,
                status=None if pd.isna(row.status) else Canonical(row.status),
                event_time=None
                if pd.isna(row.event_time)
                else pd.Timestamp(row.event_time).to_pydatetime(),
                stop_tracking=bool(row.stop_tracking),
                status_changed_at=_stored_time(row, "status_changed_at"),
            )
        )
    return orders
