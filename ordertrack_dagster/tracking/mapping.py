"""From the snapshot and the raw answers to one mapped row per selected order (pure).

The tables live in the courier modules; this joins orders to answers, applies the courier's
reader, and turns fetch failures into outcomes that leave the order due for the next run.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pandas as pd
from bson import ObjectId

from ordertrack_dagster.couriers import Interpreter, read_json_text
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
    rows = []
    for order in orders.itertuples(index=False):
        record = by_key.get(order.tracking_key)
        reading = _read(order, record, interpret, now)
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
            }
        )
    frame = pd.DataFrame(rows, columns=UPDATE_COLUMNS)
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    frame["current_status_id"] = frame["current_status_id"].astype("Int64")
    return frame


def _read(order: Any, record: Any, interpret: Interpreter, now: datetime) -> Interpretation:
    if record is None:
        return Interpretation(Outcome.FAILED, alert="no fetch record for this key")
    state = FetchState(record.state)
    if state is not FetchState.ANSWERED:
        return Interpretation(_FETCH_OUTCOMES[state], alert=record.error)
    try:
        answer = read_json_text(record.raw)
    except (TypeError, ValueError):
        return Interpretation(Outcome.FAILED, alert="stored answer is not JSON")
    context = OrderContext(order_id=str(order.order_id), tracking_key=order.tracking_key)
    try:
        return interpret(answer, context, now)
    except Exception as error:  # a reader bug or an answer shape nobody foresaw
        return Interpretation(
            Outcome.FAILED, alert=f"could not read the answer: {type(error).__name__}: {error}"
        )


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
            )
        )
    return orders
