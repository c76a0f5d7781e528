"""Which orders a flow tracks (contract §2): the MongoDB filter, sort and cap, as pure values."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ordertrack_dagster.flows import Flow, Selection
from ordertrack_dagster.polling import SELECTION_SORT, STATUS_CHANGED_FIELD

PRIMARY_SOURCES = ("shopify", "woocommerce", "Outbound", "other", "Retailer")
DEFAULT_TRACKING_STATUS = "4,5,6,7,8,9,11,14,16,51,26,25"
DEFAULT_BUFFER_DAYS = 31

#: The fields the pipeline reads of a selected order (a projection keeps the snapshot lean).
SNAPSHOT_FIELDS = (
    "order_id",
    "order_status",
    "awb_number",
    "delhivery_lr_number",
    "bookingCourier",
    "source",
    "isBooked.timestamp",
    "last_tracking_time",
    STATUS_CHANGED_FIELD,
)


@dataclass(frozen=True)
class SelectionPolicy:
    """The environment's say in selection: TRACKING_STATUS and BUFFER_PERIOD."""

    tracking_status_ids: tuple[int, ...]
    buffer_days: int

    @classmethod
    def from_env(cls) -> SelectionPolicy:
        raw = os.environ.get("TRACKING_STATUS", "").strip() or DEFAULT_TRACKING_STATUS
        ids = tuple(int(part) for part in raw.split(",") if part.strip())
        days = int(os.environ.get("BUFFER_PERIOD", "").strip() or DEFAULT_BUFFER_DAYS)
        return cls(tracking_status_ids=ids, buffer_days=days)


@dataclass(frozen=True)
class OrderQuery:
    """A flow's selection, ready for pymongo and for the query log."""

    filter: dict[str, Any]
    sort: list[tuple[str, int]]
    limit: int | None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly form (regexes and dates as text) for metadata and logs."""
        return {"filter": _jsonable(self.filter), "sort": self.sort, "limit": self.limit}


def _present(field: str) -> dict[str, Any]:
    return {field: {"$exists": True, "$nin": [None, ""]}}


def _absent(field: str) -> dict[str, Any]:
    return {"$or": [{field: {"$exists": False}}, {field: {"$in": [None, ""]}}]}


def build_query(flow: Flow, policy: SelectionPolicy, now: datetime) -> OrderQuery:
    """Contract §2: the base filter plus the flow's own; earliest next poll first; the cap."""
    courier = re.compile(flow.booking_courier_pattern, re.IGNORECASE)
    clauses: list[dict[str, Any]] = [
        {"order_status": {"$in": list(policy.tracking_status_ids)}},
        {"isBooked.timestamp": {"$gte": now - timedelta(days=policy.buffer_days)}},
        {"being_tracked": {"$ne": False}},
        {"bookingCourier": courier},
    ]
    if flow.selection is Selection.LR_NUMBER:
        clauses += [_present("delhivery_lr_number"), {"source": {"$in": list(PRIMARY_SOURCES)}}]
    else:
        primary = "$nin" if flow.selection is Selection.NON_PRIMARY_WAYBILL else "$in"
        clauses += [
            _present("awb_number"),
            _absent("delhivery_lr_number"),
            {"source": {primary: list(PRIMARY_SOURCES)}},
        ]
    return OrderQuery(
        filter={"$and": clauses},
        sort=list(SELECTION_SORT),
        limit=flow.cap,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, re.Pattern):
        return f"/{value.pattern}/i"
    if isinstance(value, datetime):
        return value.isoformat()
    return value
