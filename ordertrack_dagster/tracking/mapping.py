"""From the snapshot and the raw answers to one mapped row per selected order (pure).

The tables live in the courier modules; this joins orders to answers, applies the courier's
reader, and turns fetch failures into outcomes that leave the order due for the next run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import pandas as pd

from ordertrack_dagster.couriers import Interpreter, implausible_time, read_json_text
from ordertrack_dagster.records import FetchState, Interpretation, OrderContext, Outcome
from ordertrack_dagster.tables import UPDATE_COLUMNS

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
    orders: pd.DataFrame,
    raw: pd.DataFrame,
    interpret: Interpreter,
    now: datetime,
    holders: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """One row per selected order: its answer read and mapped, or why there was none.

    `holders`: the order ids of every live order, of any flow, holding each tracking key
    that more than one of them holds (`selection.shared_key_holders`); keys shared inside
    the selection are found here too."""
    by_key = {row.tracking_key: row for row in raw.itertuples(index=False)}
    readings = [
        (order, _read(order, by_key.get(order.tracking_key), interpret, now))
        for order in orders.itertuples(index=False)
    ]
    shared = _shared_keys(orders, holders or {})
    rows = []
    for order, reading in readings:
        if order.tracking_key in shared and reading.outcome.was_read:
            record = by_key[order.tracking_key]
            reading = _one_holder_only(
                order, reading, shared[order.tracking_key], record, interpret, now
            )
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
                "status_changed_at": stored_time(order, "status_changed_at"),
            }
        )
    frame = pd.DataFrame(rows, columns=UPDATE_COLUMNS)
    for column in ("event_time", "status_changed_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame["current_status_id"] = frame["current_status_id"].astype("Int64")
    return frame


def _shared_keys(
    orders: pd.DataFrame, holders: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """The order ids holding each key held by more than one order: the live orders found in
    MongoDB, or else the selected orders (an order changed since it was selected)."""
    selected: dict[str, list[str]] = {}
    for order in orders.itertuples(index=False):
        selected.setdefault(order.tracking_key, []).append(str(order.order_id))
    shared = {}
    for key, ids in selected.items():
        held = sorted(map(str, holders.get(key) or ()))
        widest = held if len(held) >= len(ids) else sorted(ids)
        if len(widest) > 1:
            shared[key] = widest
    return shared


def _one_holder_only(
    order: Any,
    reading: Interpretation,
    holder_ids: list[str],
    record: Any,
    interpret: Interpreter,
    now: datetime,
) -> Interpretation:
    """An answer for a tracking key several live orders hold reaches exactly one of them or
    none: a status, and an RTO webhook, for the wrong customer is worse than a late one. It
    reaches the one order the answer itself names (Delhivery's ReferenceNo) when exactly one
    holder fits it; every other holder is left untouched with an alert."""
    fits = _holders_the_answer_fits(order.tracking_key, holder_ids, record, interpret, now)
    if fits == [str(order.order_id)]:
        return reading
    key, ids = order.tracking_key, ", ".join(holder_ids)
    held = f"shared tracking key: {key} is held by live orders {ids}"
    if len(fits) == 1:
        verdict = f"its answer names order {fits[0]}, so it was not applied to this one"
    elif fits:
        verdict = f"its answer fits orders {', '.join(fits)}: applied to none of them"
    else:
        verdict = "its answer fits none of them: applied to none of them"
    return Interpretation(Outcome.FAILED, alert=f"{held}: {verdict}")


def _holders_the_answer_fits(
    key: str, holder_ids: list[str], record: Any, interpret: Interpreter, now: datetime
) -> list[str]:
    """The holders the courier's answer does not refuse as another order's (only Delhivery's
    answers name their order; the others' fit every holder)."""
    answer = read_json_text(record.raw)

    def fits(holder: str) -> bool:
        try:
            reading = interpret(answer, OrderContext(order_id=holder, tracking_key=key), now)
        except Exception:  # noqa: BLE001 - a reader bug: it cannot rule the holder out
            return True
        return reading.outcome is not Outcome.REFERENCE_MISMATCH

    return [holder for holder in holder_ids if fits(holder)]


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


def stored_time(row: Any, column: str) -> datetime | None:
    """A time column of a stored table; None when empty, or absent from a table stored before
    the column existed (a write re-executed on an older run's input)."""
    value = getattr(row, column, None)
    return None if value is None or pd.isna(value) else pd.Timestamp(value).to_pydatetime()
