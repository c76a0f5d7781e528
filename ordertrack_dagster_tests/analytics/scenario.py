"""A small, realistic tracking history written straight to S3 in the IO manager's key layout:
four runs of two flows over three days, with the columns and types the tracking assets store.

Days are offsets from `last_day` (the day of the newest run), so a test can place the history
on fixed dates or on today.

    delhivery_b2c  run b2c-1 on last_day-2, run b2c-2 on last_day
    shiprocket     runs sr-1 and sr-2 on last_day-1

What happens to the shipments:
    AWB1 (1001)  in transit, then out_for_delivery (scanned on the last day)
    AWB2 (1002)  unmapped "ud-held_at_hub" in both runs; last scan last_day-4 08:00: stuck
    AWB3 (1003)  never answered (booked last_day-8): stuck since booking
    AWB4 (1004)  an old delivered answer in the last run (refused from rto): final, not stuck
    AWB5 (1005)  in transit in the first run only: no longer tracked
    AWB6 (1006)  unmapped "ud-held_at_hub" in the first run only
    SR1  (2001)  delivered in sr-1
    SR2  (2002)  unmapped "REACHED_WAREHOUSE" in both runs; last scan last_day-5 06:00: stuck
    SR3  (2003)  rto in transit in sr-1; sr-2's batch failed (HTTP 502 after 3 attempts)
    SR9  (2009)  deferred in sr-2 (courier paused)
"""

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pandas as pd

from ordertrack_dagster.analytics.history import HISTORY_COLUMNS, HistoryStore
from ordertrack_dagster.resources.s3 import dataframe_to_parquet, history_key

ODD_KEY = "??"
ODD_ERROR = f"odd tracking key {ODD_KEY!r}: not asked"
NOT_ANSWERED = "asked but not answered"

#: run id -> (flow, day offset, time the batch was sent)
RUNS = {
    "b2c-1": ("delhivery_b2c", -2, "06:00"),
    "sr-1": ("shiprocket", -1, "06:00"),
    "sr-2": ("shiprocket", -1, "06:08"),
    "b2c-2": ("delhivery_b2c", 0, "06:00"),
}
#: tracking key -> (order_id, booked: day offset and time)
ORDERS = {
    "AWB1": ("1001", (-6, "10:00")),
    "AWB2": ("1002", (-7, "10:00")),
    "AWB3": ("1003", (-8, "00:00")),
    "AWB4": ("1004", (-20, "10:00")),
    "AWB5": ("1005", (-12, "10:00")),
    "AWB6": ("1006", (-6, "10:00")),
    ODD_KEY: ("1007", (-3, "10:00")),
    "SR1": ("2001", (-4, "10:00")),
    "SR2": ("2002", (-6, "10:00")),
    "SR3": ("2003", (-9, "10:00")),
    "SR9": ("2009", (-2, "10:00")),
}

# (run, key, state, batch, http_status, latency_ms, attempts, error)
RAW = [
    ("b2c-1", "AWB1", "answered", 0, 200, 120.0, 1, None),
    ("b2c-1", "AWB2", "answered", 0, 200, 120.0, 1, None),
    ("b2c-1", "AWB3", "not_answered", 0, 200, 120.0, 1, NOT_ANSWERED),
    ("b2c-1", "AWB5", "answered", 0, 200, 120.0, 1, None),
    ("b2c-1", "AWB6", "answered", 0, 200, 120.0, 1, None),
    ("sr-1", "SR1", "answered", 0, 200, 200.0, 1, None),
    ("sr-1", "SR2", "answered", 0, 200, 200.0, 1, None),
    ("sr-1", "SR3", "answered", 0, 200, 200.0, 1, None),
    ("sr-2", "SR2", "failed", 0, 502, 50.0, 3, "HTTP 502"),
    ("sr-2", "SR3", "failed", 0, 502, 50.0, 3, "HTTP 502"),
    ("sr-2", "SR9", "deferred", 1, None, None, 0, "courier paused until 2024-09-21 06:30:00Z"),
    ("b2c-2", "AWB1", "answered", 0, 200, 100.0, 1, None),
    ("b2c-2", "AWB2", "answered", 0, 200, 100.0, 1, None),
    ("b2c-2", "AWB4", "answered", 1, 200, 300.0, 2, None),
    ("b2c-2", "AWB3", "not_answered", 1, 200, 300.0, 2, NOT_ANSWERED),
    ("b2c-2", ODD_KEY, "failed", -1, None, None, 0, ODD_ERROR),
]

# (run, key, outcome, courier_status, status, courier event: day offset and time)
UPDATES = [
    ("b2c-1", "AWB1", "mapped", "ud-in_transit", "in transit", (-3, "10:00")),
    ("b2c-1", "AWB2", "unmapped", "ud-held_at_hub", None, (-4, "08:00")),
    ("b2c-1", "AWB3", "not_found", None, None, None),
    ("b2c-1", "AWB5", "mapped", "ud-in_transit", "in transit", (-10, "10:00")),
    ("b2c-1", "AWB6", "unmapped", "ud-held_at_hub", None, (-3, "13:00")),
    ("sr-1", "SR1", "mapped", "Delivered", "delivered", (-1, "09:00")),
    ("sr-1", "SR2", "unmapped", "REACHED_WAREHOUSE", None, (-5, "06:00")),
    ("sr-1", "SR3", "mapped", "RTO In Transit", "rto in transit", (-1, "05:00")),
    ("sr-2", "SR2", "unmapped", "REACHED_WAREHOUSE", None, (-5, "06:00")),
    ("sr-2", "SR3", "failed", None, None, None),
    ("sr-2", "SR9", "deferred", None, None, None),
    ("b2c-2", "AWB1", "mapped", "ud-dispatched", "out_for_delivery", (0, "07:00")),
    ("b2c-2", "AWB2", "unmapped", "ud-held_at_hub", None, (-4, "08:00")),
    ("b2c-2", "AWB4", "mapped", "dl-delivered", "delivered", (-12, "10:00")),
    ("b2c-2", "AWB3", "not_found", None, None, None),
    ("b2c-2", ODD_KEY, "failed", None, None, None),
]

# (run, key, action, from_status, to_status)
WRITES = [
    ("b2c-1", "AWB1", "status_changed", "pending", "in transit"),
    ("b2c-1", "AWB2", "poll_recorded", "in transit", "in transit"),
    ("b2c-1", "AWB3", "untouched", "4", None),
    ("b2c-1", "AWB5", "status_changed", "4", "in transit"),
    ("b2c-1", "AWB6", "poll_recorded", "4", "4"),
    ("sr-1", "SR1", "status_changed", "out_for_delivery", "delivered"),
    ("sr-1", "SR2", "poll_recorded", "in transit", "in transit"),
    ("sr-1", "SR3", "status_changed", "in transit", "rto in transit"),
    ("sr-2", "SR2", "poll_recorded", "in transit", "in transit"),
    ("sr-2", "SR3", "untouched", "rto in transit", None),
    ("sr-2", "SR9", "untouched", "4", None),
    ("b2c-2", "AWB1", "status_changed", "in transit", "out_for_delivery"),
    ("b2c-2", "AWB2", "poll_recorded", "in transit", "in transit"),
    ("b2c-2", "AWB4", "refused", "rto", "delivered"),
    ("b2c-2", "AWB3", "untouched", "4", None),
    ("b2c-2", ODD_KEY, "untouched", "4", None),
]


def at(last_day: date, day_offset: int, hhmm: str) -> datetime:
    return datetime.combine(last_day + timedelta(days=day_offset), time.fromisoformat(hhmm), UTC)


def order_oid(key: str) -> str:
    """A stable ObjectId hex per order, as the snapshot stores it."""
    return f"{int(ORDERS[key][0]):024x}"


def raw_answer(key: str, courier_status: str | None) -> str:
    return json.dumps({"AWB": key, "ReferenceNo": ORDERS[key][0], "Status": courier_status})


@dataclass(frozen=True)
class Scenario:
    last_day: date
    frames: dict[tuple[str, str], pd.DataFrame]  # (asset, run_id) -> what that run stored

    def day(self, run_id: str) -> date:
        return self.last_day + timedelta(days=RUNS[run_id][1])

    def flow(self, run_id: str) -> str:
        return RUNS[run_id][0]


def build(last_day: date) -> Scenario:
    """Every run's frames, with the tracking assets' column layout and types."""
    statuses = {(run, key): courier_status for run, key, _, courier_status, *_ in UPDATES}
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run, key, state, batch, http, latency, attempts, error in RAW:
        flow, day, sent = RUNS[run]
        answered = state == "answered"
        rows.setdefault(("raw_courier_responses", run), []).append(
            {
                "flow": flow,
                "run_id": run,
                "tracking_key": key,
                "state": state,
                "batch": batch,
                "http_status": http,
                "fetched_at": at(last_day, day, sent),
                "latency_ms": latency,
                "attempts": attempts,
                "raw": raw_answer(key, statuses[(run, key)]) if answered else None,
                "error": error,
            }
        )
    for run, key, outcome, courier_status, status, event in UPDATES:
        order_id, booked = ORDERS[key]
        rows.setdefault(("status_updates", run), []).append(
            {
                "order_oid": order_oid(key),
                "order_id": order_id,
                "tracking_key": key,
                "current_status_id": 4,
                "booked_at": at(last_day, *booked),
                "outcome": outcome,
                "courier_status": courier_status,
                "status": status,
                "event_time": at(last_day, *event) if event else None,
                "stop_tracking": False,
                "alert": f"unmapped status {courier_status!r}" if outcome == "unmapped" else None,
            }
        )
    for run, key, action, from_status, to_status in WRITES:
        outcome = next(o for r, k, o, *_ in UPDATES if (r, k) == (run, key))
        rows.setdefault(("order_status_writes", run), []).append(
            {
                "order_oid": order_oid(key),
                "order_id": ORDERS[key][0],
                "tracking_key": key,
                "outcome": outcome,
                "action": action,
                "from_status": from_status,
                "to_status": to_status,
                "events": "crm_rto" if to_status == "rto in transit" else "",
                "alert": None,
            }
        )
    return Scenario(last_day, {key: _frame(key[0], items) for key, items in rows.items()})


def _frame(asset: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS[asset])
    for column in ("fetched_at", "booked_at", "event_time"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    if "current_status_id" in frame:
        frame["current_status_id"] = frame["current_status_id"].astype("Int64")
    return frame


def write(store: HistoryStore, scenario: Scenario) -> None:
    """Store every run the way the IO manager does (oldest run first)."""
    for (asset, run), frame in scenario.frames.items():
        flow, day, sent = RUNS[run]
        key = history_key(store.prefix, asset, flow, run, at(scenario.last_day, day, sent))
        store.client.put_object(Bucket=store.bucket, Key=key, Body=dataframe_to_parquet(frame))
