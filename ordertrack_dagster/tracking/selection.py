"""Which orders a flow tracks (contract §2): the MongoDB filter, sort and cap, as pure values;
and which tracking keys more than one live order holds."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database

from ordertrack_dagster.flows import Flow, Selection, outranking
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


def _base_clauses(policy: SelectionPolicy, now: datetime) -> list[dict[str, Any]]:
    """Contract §2's base filter: the orders some flow may track (the live orders)."""
    return [
        {"order_status": {"$in": list(policy.tracking_status_ids)}},
        {"isBooked.timestamp": {"$gte": now - timedelta(days=policy.buffer_days)}},
        {"being_tracked": {"$ne": False}},
    ]


def build_query(
    flow: Flow, policy: SelectionPolicy, now: datetime, chosen: ChosenOrders | None = None
) -> OrderQuery:
    """Contract §2: the base filter plus the flow's own; earliest next poll first; the cap.
    With `chosen`, only those of the flow's tracked orders (a re-poll ops asked for)."""
    courier = re.compile(flow.booking_courier_pattern, re.IGNORECASE)
    clauses = [*_base_clauses(policy, now), {"bookingCourier": courier}]
    # a bookingCourier naming two flows' couriers goes to the flow that comes first
    clauses += [
        {"bookingCourier": {"$not": re.compile(other.booking_courier_pattern, re.IGNORECASE)}}
        for other in outranking(flow)
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
        sort=list(SELECTION_SORT),
        limit=flow.cap,
    )


def shared_keys_pipeline(
    flow: Flow, policy: SelectionPolicy, now: datetime
) -> list[dict[str, Any]]:
    """The aggregation finding every tracking key (of the flow's key field) more than one live
    order holds, whatever flow tracks them (an answer for such a key cannot say whose it is),
    with their order ids. It groups all the live orders rather than reading those holding the
    answered keys: a `$in` of keys costs keys x orders on the embedded database used in
    development (10,000 keys over 20,000 orders: 137 s, against 1.2 s for the group), and the
    group is cheap on MongoDB too (the live orders are about 100,000)."""
    field = flow.tracking_key_field
    clauses = [*_base_clauses(policy, now), _present(field)]
    if flow.selection is not Selection.LR_NUMBER:
        clauses.append(_absent("delhivery_lr_number"))  # LR orders are asked by their LR
    return [
        {"$match": {"$and": clauses}},
        {"$group": {"_id": f"${field}", "order_ids": {"$push": "$order_id"}, "n": {"$sum": 1}}},
        {"$match": {"n": {"$gt": 1}}},
    ]


def shared_key_holders(db: Database, flow: Flow, now: datetime) -> dict[str, list[str]]:
    """The order ids of the live orders holding each tracking key that more than one holds,
    over every flow's orders, so a pair of orders split between two capped runs is seen by
    both. One aggregation, whatever the number of keys answered: a caller mapping several
    parts of a run's answers computes it once and reuses it."""
    pipeline = shared_keys_pipeline(flow, SelectionPolicy.from_env(), now)
    # the group holds every live order's key: past MongoDB's 100 MB a stage may use in memory
    # (far beyond today's 100,000 orders) it spills to disk rather than failing the run
    return {
        doc["_id"]: [str(order_id) for order_id in doc["order_ids"]]
        for doc in db["orders"].aggregate(pipeline, allowDiskUse=True)
    }


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
