"""Which orders a flow tracks (contract §2): the MongoDB filter, sort and cap, as pure values."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ordertrack_dagster.flows import Flow, Selection

#: When ordertrack last asked the courier about an order, answered or not (contract §2). The
#: queue's order: an order asked without a usable answer goes behind those not asked since,
#: while `last_tracking_time` keeps meaning "the courier answered".
ASKED_FIELD = "ordertrack_asked_at"
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


@dataclass(frozen=True)
class ChosenOrders:
    """Orders ops asked to re-poll now, by order id and/or tracking key (AWB or LR number)."""

    order_ids: tuple[str, ...] = ()
    tracking_keys: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.order_ids or self.tracking_keys)

    def clause(self, flow: Flow) -> dict[str, Any]:
        """Any of the chosen orders (ids as text or as numbers, as the shop stored them)."""
        ids: list[Any] = list(self.order_ids)
        ids += [int(text) for text in self.order_ids if text.isdigit()]
        return {
            "$or": [
                {"order_id": {"$in": ids}},
                {flow.tracking_key_field: {"$in": list(self.tracking_keys)}},
            ]
        }


def build_query(
    flow: Flow, policy: SelectionPolicy, now: datetime, chosen: ChosenOrders | None = None
) -> OrderQuery:
    """Contract §2: the base filter plus the flow's own; longest not asked first; the flow's cap.
    With `chosen`, only those of the flow's tracked orders (a re-poll ops asked for)."""
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
    if chosen:
        clauses.append(chosen.clause(flow))
    return OrderQuery(
        filter={"$and": clauses},
        sort=[(ASKED_FIELD, 1), ("last_tracking_time", 1), ("_id", 1)],
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
