"""Delhivery express tracking: the B2C flow (50 waybills a GET) and the slow fallback path
(one waybill a GET). Client, answer parsing and the contract §5 tables, in one place.

The legacy table also serves the B2B module, which imports it from here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
from dagster import ConfigurableResource
from pydantic import Field

from ordertrack_dagster.couriers.answers import (
    implausible_time,
    parse_courier_time,
    read_json_text,
)
from ordertrack_dagster.couriers.description import (
    CourierDescription,
    CourierSetting,
    SettingKind,
)
from ordertrack_dagster.couriers.engine import CourierClient, Request
from ordertrack_dagster.couriers.failures import BatchFailure, NotAnswered
from ordertrack_dagster.flows import Flow
from ordertrack_dagster.records import INDIA, Interpretation, OrderContext, Outcome
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.statuses import Canonical, mapping_table, normalise_raw_status

C = Canonical

#: contract §5 "Delhivery legacy table": B2B, and any raw status the pair table lacks.
LEGACY_TABLE = mapping_table(
    {
        None: "PICK_UP_PENDING MANIFESTED WAITING_PICKUP PICKUP_QUEUED PICKUP_RESCHEDULED "
        "PICK_REQUESTED SHIPMENT_BOOKED",
        C.IN_TRANSIT: "IN_TRANSIT PICKED_UP DISPATCHED RECEIVED_AT_ORIGIN REACHED_AT_DESTINATION "
        "REACH_DESTINATION LEFT_ORIGIN BAGGED RECEIVED ADDED_TO_BAG CONNECTION_ALLOCATED "
        "IN_TRANSIT_TO PICKUP_COMPLETE SHIPPED IN_TRANSIT_TO_NEXT_FACILITY",
        C.OUT_FOR_DELIVERY: "OFD OUT_FOR_DELIVERY",
        C.DELIVERED: "DELIVERED SHIPMENT_DELIVERED PART_DEL",
        C.RTO: "RTO RETURNED OUT_FOR_RETURN RTO_DELIVERED RETURNED_TO_ORIGIN RTO_COMPLETED "
        "RETURN_DELIVERED",
        C.RTO_IN_TRANSIT: "RETURNED_INTRANSIT RTO_IN_TRANSIT RTO_IN_INTRANSIT RTO_OUT_FOR_DELIVERY "
        "RTO_OFD RECEIVED_AT_RETURN_CENTER RETURN_OFD",
        C.BOOKING_CANCELLED: "NOT_PICKED CANCELLED BOOKING_CANCELLED",
        C.NDR: "NDR FAILED_DELIVERY UNDELIVERED UNDEL_REATTEMPT",
        C.LOST: "LOST MISSING UNTRACEABLE",
        C.DESTROY: "DESTROYED DISPOSED_OFF DAMAGED",
    }
)

#: contract §5 (StatusType, Status) pairs; UD/Pending and the failed-delivery codes are rules below.
PAIR_TABLE: dict[tuple[str, str], Canonical | None] = {
    ("UD", "MANIFESTED"): None,
    ("UD", "NOT_PICKED"): C.BOOKING_CANCELLED,
    ("UD", "IN_TRANSIT"): C.IN_TRANSIT,
    ("UD", "DISPATCHED"): C.OUT_FOR_DELIVERY,
    ("DL", "DELIVERED"): C.DELIVERED,
    ("DL", "RTO"): C.RTO,
    ("DL", "DTO"): C.DELIVERED,
    ("RT", "IN_TRANSIT"): C.RTO_IN_TRANSIT,
    ("RT", "PENDING"): C.RTO_IN_TRANSIT,
    ("RT", "DISPATCHED"): C.RTO_IN_TRANSIT,
}

#: Improvement: these StatusCodes on UD/Pending or UD/Dispatched mean a failed delivery.
FAILED_DELIVERY_CODES = frozenset(
    {"EOD-74", "EOD-15", "EOD-104", "EOD-43", "EOD-86", "EOD-11", "EOD-69", "EOD-6"}
)

_REBOOKING_SUFFIX = re.compile(r"-(C[12]?|K|R)$", re.IGNORECASE)
_FALLBACK_STOP_TEXTS = ("end state", "invalid awb", "very old")
FALLBACK_END_STATE_AGE = timedelta(days=7)
DELHIVERY_BLOCK_SECONDS = 8 * 60


def references_match(reference_no: str, order_id: str) -> bool:
    """ReferenceNo vs order_id, case-insensitive, allowing rebooking suffixes on either side."""

    def base(value: str) -> str:
        return _REBOOKING_SUFFIX.sub("", value.strip()).casefold()

    return base(reference_no) == base(order_id)


def map_express_status(
    status: dict[str, Any], pickup_date: Any, now: datetime
) -> tuple[str, Canonical | None, bool]:
    """(courier_status, canonical status or None for "no change", whether it was mapped).

    Pairs first, then the legacy table on the status alone; unknown to both is unmapped.
    """
    status_type = normalise_raw_status(str(status.get("StatusType") or ""))
    raw = normalise_raw_status(str(status.get("Status") or ""))
    courier_status = f"{status_type}-{raw}".lower()
    code = str(status.get("StatusCode") or "").strip().upper()
    if raw == "LOST":
        return courier_status, C.LOST, True
    if status_type == "UD" and raw in {"PENDING", "DISPATCHED"} and code in FAILED_DELIVERY_CODES:
        return courier_status, C.NDR, True
    if (status_type, raw) == ("UD", "PENDING"):
        picked_up = parse_courier_time(pickup_date)
        today = now.astimezone(INDIA).date()
        before_today = picked_up is not None and picked_up.astimezone(INDIA).date() < today
        return courier_status, C.IN_TRANSIT if before_today else C.PENDING, True
    if (status_type, raw) in PAIR_TABLE:
        return courier_status, PAIR_TABLE[(status_type, raw)], True
    if raw in LEGACY_TABLE:
        return courier_status, LEGACY_TABLE[raw], True
    return courier_status, None, False


def interpret_express(answer: Any, order: OrderContext, now: datetime) -> Interpretation:
    """Read one `Shipment` of the express API (B2C flow)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("Status"), dict):
        return Interpretation(Outcome.FAILED, alert="malformed answer: no Status object")
    status = answer["Status"]
    courier_status, canonical, mapped = map_express_status(status, answer.get("PickUpDate"), now)
    event_time = parse_courier_time(status.get("StatusDateTime"))
    reference = answer.get("ReferenceNo")
    if reference is not None and not references_match(str(reference), order.order_id):
        return Interpretation(
            Outcome.REFERENCE_MISMATCH,
            courier_status=courier_status,
            event_time=event_time,
            alert=f"ReferenceNo {reference!r} does not match order {order.order_id!r}"
            " (waybill reused?); status not updated",
        )
    if not mapped:
        return Interpretation(
            Outcome.UNMAPPED,
            courier_status=courier_status,
            event_time=event_time,
            alert=f"unmapped status {status.get('StatusType')!r}/{status.get('Status')!r}",
        )
    return Interpretation(
        Outcome.MAPPED if canonical else Outcome.NO_CHANGE,
        courier_status=courier_status,
        status=canonical,
        event_time=event_time,
    )


def interpret_fallback(answer: Any, order: OrderContext, now: datetime) -> Interpretation:
    """Read one fallback answer: an express `Shipment`, or an error body for one waybill.

    End states reached 7+ days ago, and invalid or very old waybills, stop tracking.
    """
    if isinstance(answer, dict) and "Error" in answer and "Status" not in answer:
        error = str(answer.get("Error") or "")
        stop = any(text in error.casefold() for text in _FALLBACK_STOP_TEXTS)
        return Interpretation(
            Outcome.NO_CHANGE if stop else Outcome.NOT_FOUND,
            courier_status=None,
            alert=f"courier error: {error}" + ("; tracking stopped" if stop else ""),
            stop_tracking=stop,
        )
    reading = interpret_express(answer, order, now)
    ended = (
        reading.status in {C.DELIVERED, C.RTO, C.LOST, C.DESTROY, C.BOOKING_CANCELLED}
        and reading.event_time is not None
        and now - reading.event_time >= FALLBACK_END_STATE_AGE
    )
    if not ended:
        return reading
    return Interpretation(
        reading.outcome,
        courier_status=reading.courier_status,
        status=reading.status,
        event_time=reading.event_time,
        alert=reading.alert,
        stop_tracking=True,
    )


class _Entry(msgspec.Struct):
    """One `ShipmentData` entry, its `Shipment` left as the bytes it came as."""

    Shipment: msgspec.Raw = msgspec.Raw()


class _ShipmentData(msgspec.Struct):
    ShipmentData: list[_Entry]


class _Waybill(msgspec.Struct):
    AWB: Any = None


_READ_SHIPMENT_DATA = msgspec.json.Decoder(_ShipmentData)
_READ_WAYBILL = msgspec.json.Decoder(_Waybill)
#: A body the cut does not take: not JSON, not UTF-8, too deep, or another shape (an error).
_NOT_CUT = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def cut_shipments(body: bytes) -> list[tuple[str, str]] | None:
    """Each `Shipment` of a well-formed express answer with an AWB, as (AWB, its JSON text as
    it came), in the answer's order; None for any other body, which `split_answer` judges.

    The text is cut from the body, not parsed and written again: the whole body is checked
    to be JSON, but only each shipment's AWB is read; the mapping parses each text once. A
    shipment keeps the courier's own spacing and escapes, and parses to the same value.
    """
    try:
        shipments = _READ_SHIPMENT_DATA.decode(body).ShipmentData
        cut = []
        for entry in shipments:
            awb = _READ_WAYBILL.decode(entry.Shipment).AWB
            if awb is not None:
                cut.append((str(awb).strip(), str(memoryview(entry.Shipment), "utf-8")))
    except _NOT_CUT:
        return None
    return cut


class _DelhiveryExpressClient(CourierClient):
    block_statuses = frozenset({403})  # Delhivery's firewall answers 403, not 429
    block_seconds = DELHIVERY_BLOCK_SECONDS

    def __init__(self, flow: Flow, state: SharedState, url: str, token: str):
        super().__init__(flow, state)
        self._url = url
        self._token = token

    async def auth_headers(self, http) -> dict[str, str]:
        return {"Authorization": f"Token {self._token}"}

    def split_answer(self, keys: Sequence[str], payload: Any) -> dict[str, Any]:
        if isinstance(payload, dict) and isinstance(payload.get("ShipmentData"), list):
            answers: dict[str, Any] = {}
            for item in payload["ShipmentData"]:
                shipment = item.get("Shipment") if isinstance(item, dict) else None
                if isinstance(shipment, dict) and shipment.get("AWB") is not None:
                    awb = str(shipment["AWB"]).strip()
                    answers[awb] = self._newer(awb, answers.get(awb), shipment)
            return answers
        if isinstance(payload, dict) and payload.get("Success") is False:
            return self.error_answer(keys, str(payload.get("Error") or payload.get("rmk") or ""))
        raise BatchFailure(
            "unexpected answer shape (no ShipmentData)", retryable=False, http_status=200
        )

    def answer_texts(self, keys: Sequence[str], response: httpx.Response) -> dict[str, str]:
        """Each shipment's text cut from the body (`cut_shipments`); any other body is read
        whole, as every courier's is."""
        cut = cut_shipments(response.content)
        if cut is None:
            return super().answer_texts(keys, response)
        texts: dict[str, str] = {}
        for awb, text in cut:
            kept = texts.get(awb)
            texts[awb] = text if kept is None else self._newer_text(awb, kept, text)
        return texts

    def error_answer(self, keys: Sequence[str], error: str) -> dict[str, Any]:
        raise NotAnswered(error or "no such waybill")

    def _newer_text(self, awb: str, kept: str, text: str) -> str:
        """`_newer` for two shipments kept as text (the same AWB twice is rare: both are read)."""
        kept_shipment = read_json_text(kept)
        newer = self._newer(awb, kept_shipment, read_json_text(text))
        return kept if newer is kept_shipment else text

    def _newer(self, awb: str, kept: dict | None, shipment: dict) -> dict:
        """The same AWB twice in one answer: the newer status wins, and ops hear of it when
        the two disagree (the order of the list is not a promise)."""
        if kept is None:
            return shipment
        newer, older = sorted((kept, shipment), key=_status_time, reverse=True)
        if _status_of(newer) != _status_of(older):
            self.answer_notes[awb] = (
                f"AWB answered twice with different statuses ({_status_of(older)!r} and "
                f"{_status_of(newer)!r}); the newest, {_status_of(newer)!r}, was used"
            )
        return newer


def _status_of(shipment: dict) -> str:
    status = shipment.get("Status")
    return str(status.get("Status")) if isinstance(status, dict) else ""


def _status_time(shipment: dict) -> datetime:
    """When the shipment's status was reached; unreadable or implausible times (a sentinel
    year 9999) sort as the oldest."""
    status = shipment.get("Status")
    when = parse_courier_time(status.get("StatusDateTime")) if isinstance(status, dict) else None
    if when is None or implausible_time(when, datetime.now(UTC)):
        return datetime.min.replace(tzinfo=UTC)
    return when


class DelhiveryB2CClient(_DelhiveryExpressClient):
    def build_request(self, keys: Sequence[str]) -> Request:
        return Request("GET", self._url, params={"waybill": ",".join(keys)})


class DelhiveryFallbackClient(_DelhiveryExpressClient):
    """One waybill a call; its error body is an answer (it can stop tracking)."""

    def build_request(self, keys: Sequence[str]) -> Request:
        return Request("GET", self._url, params={"wbn": keys[0]})

    def error_answer(self, keys: Sequence[str], error: str) -> dict[str, Any]:
        return {keys[0]: {"Success": False, "Error": error}}


class DelhiveryResource(ConfigurableResource):
    """Delhivery's express tracking API (B2C and the single-waybill fallback path)."""

    url: str = Field(description="DELHIVERY_URL: the express tracking endpoint")
    fallback_url: str = Field(description="DELHIVERY_FALLBACK_URL: the single-waybill endpoint")
    token: str = Field(description="DELHIVERY_AUTH_TOKEN_B2C")

    def client(self, flow: Flow, state: SharedState) -> CourierClient:
        if flow.key == "delhivery_fallback":
            return DelhiveryFallbackClient(flow, state, self.fallback_url, self.token)
        return DelhiveryB2CClient(flow, state, self.url, self.token)


DESCRIPTION = CourierDescription(
    resource_key="delhivery",
    resource_class=DelhiveryResource,
    settings=(
        CourierSetting("url", "DELHIVERY_URL", SettingKind.URL),
        CourierSetting("fallback_url", "DELHIVERY_FALLBACK_URL", SettingKind.URL),
        CourierSetting("token", "DELHIVERY_AUTH_TOKEN_B2C", SettingKind.SECRET),
    ),
    interpreters={"delhivery_b2c": interpret_express, "delhivery_fallback": interpret_fallback},
)
