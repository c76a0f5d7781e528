"""What the side effects say (contract §7), as pure functions of outbox documents.

Slack messages are mrkdwn: every value that comes from an order or a courier is escaped, so
a waybill or a raw courier status cannot open a link or mention a channel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from bson.decimal128 import Decimal128

from ordertrack_dagster.flows import FLOWS, Selection
from ordertrack_dagster.markers import Event

_TITLES = {
    Event.SLACK_CANCELLED.value: ":no_entry: Booking cancelled",
    Event.SLACK_LOST_DESTROY.value: ":rotating_light: Shipment {status}",
    Event.SLACK_B2B_SAME_DAY_DELIVERY.value: ":white_check_mark: B2B order delivered the day it "
    "was booked",
}
_KIND_NAMES = {
    Event.CRM_RTO.value: "CRM RTO webhook",
    Event.SLACK_CANCELLED.value: "booking-cancelled Slack alert",
    Event.SLACK_LOST_DESTROY.value: "lost/destroyed Slack alert",
    Event.SLACK_B2B_SAME_DAY_DELIVERY.value: "same-day B2B delivery Slack alert",
    "alert_log": "tracking alert log",
    "query_log": "query log",
    "email_summary": "email summary",
}
MAX_LISTED = 20


def slack_escape(value: Any) -> str:
    """Slack mrkdwn escaping of free text: only `&`, `<` and `>` are special."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_link(url: str, label: str) -> str:
    return f"<{slack_escape(url)}|{slack_escape(label)}>"


def courier_label(flow_key: str) -> str:
    flow = FLOWS.get(flow_key)
    return flow.courier_label if flow else flow_key


def key_label(flow_key: str) -> str:
    """B2B shipments are known by their LR number, the others by their AWB."""
    flow = FLOWS.get(flow_key)
    return "LR" if flow and flow.selection is Selection.LR_NUMBER else "AWB"


def status_alert_text(doc: Mapping[str, Any]) -> str:
    """The Slack message for a status event: order, AWB or LR, courier and status."""
    status = str(doc.get("status") or "")
    title = _TITLES[doc["kind"]].format(status=slack_escape(status))
    flow_key = str(doc.get("flow"))
    return (
        f"{title}\n"
        f"*Order:* {slack_escape(doc.get('order_id'))}\n"
        f"*{key_label(flow_key)}:* {slack_escape(doc.get('tracking_key'))}\n"
        f"*Courier:* {slack_escape(courier_label(flow_key))}\n"
        f"*Status:* {slack_escape(status)}"
    )


def plain_number(value: Any) -> int | float | None:
    """An amount as JSON can carry it, whatever BSON type production stored it in.

    `Decimal128`, `Int64`, numeric strings ("1,499.00" too) and floats become a number;
    anything else (None, NaN, a word, a sub-document) becomes None rather than failing the
    webhook of that order on every attempt.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    elif isinstance(value, str):
        value = value.strip().replace(",", "")
    try:
        number = Decimal(value) if isinstance(value, str | Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError):
        return None
    if not number.is_finite():
        return None
    if number == number.to_integral_value():
        return int(number)
    as_float = float(number)
    return as_float if math.isfinite(as_float) else None


def plain_text(value: Any) -> str | None:
    """A phone number or name as text (production has them as strings, ints or Int64)."""
    if value is None or isinstance(value, Mapping | list):
        return None
    return str(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def crm_payload(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The CRM cancel-order webhook body (contract §7), from the order as drained."""
    order = _mapping(doc.get("order"))
    return {
        "phone_number": plain_text(order.get("phone")),
        "order_id": plain_text(doc.get("order_id")),
        "order_source": plain_text(order.get("marketplace")),
        "order_value": plain_number(order.get("total_amt")),
        "status": "rto",
        "tracking_status": doc.get("status"),
    }


def describe_delivery(doc: Mapping[str, Any]) -> str:
    """One line naming a delivery, for dead-letter notices."""
    name = _KIND_NAMES.get(str(doc.get("kind")), str(doc.get("kind")))
    subject = (
        f"order {doc['order_id']}"
        if doc.get("order_id") is not None
        else f"run {doc.get('run_id')}"
    )
    return f"{name} for {subject}"


def dead_letter_text(flow_key: str, docs: Sequence[Mapping[str, Any]], hours: float) -> str:
    """Slack notice for deliveries given up on: what, and the last error of each."""
    lines = [
        f":skull: *{slack_escape(courier_label(flow_key))}: {len(docs)} side effect(s) gave up "
        f"after failing for {hours:g} hours* (dead letters; re-queue with the asset's "
        "`retry_dead_letters` config)"
    ]
    for doc in docs[:MAX_LISTED]:
        error = doc.get("last_error") or "unknown error"
        lines.append(f"• {slack_escape(describe_delivery(doc))}: {slack_escape(error)}")
    if len(docs) > MAX_LISTED:
        lines.append(f"… and {len(docs) - MAX_LISTED} more")
    return "\n".join(lines)
