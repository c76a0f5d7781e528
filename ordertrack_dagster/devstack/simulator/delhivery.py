"""Delhivery express, simulated: the B2C path (up to 50 waybills a GET) and the fallback path
(one waybill a GET). Both answer from one waybill space under one firewall quota, refusing
with a firewall page rather than a 429.

The time format serves the B2B module too, which imports it from here.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ordertrack_dagster.devstack.simulator.base import (
    IST,
    BadRequest,
    CourierApi,
    JSONResponse,
    ListedCourierApi,
    Route,
)
from ordertrack_dagster.devstack.simulator.description import CourierSim, DemoOrders, digits
from ordertrack_dagster.devstack.simulator.faults import firewall_block
from ordertrack_dagster.devstack.simulator.lifecycle import (
    DAY,
    END_STEPS,
    Events,
    Profile,
    Shipment,
    first_times,
)
from ordertrack_dagster.devstack.simulator.ratelimit import RateLimit
from ordertrack_dagster.statuses import Canonical

# Step -> (StatusType, Status, StatusCode, Instructions); a failed attempt's code and text are
# drawn per shipment from _EOD_CODES.
_STATUSES = {
    "manifested": ("UD", "Manifested", "X-UCI", "Manifest uploaded"),
    "picked_up": ("UD", "In Transit", "X-PPOM", "Shipment picked up"),
    "in_transit": ("UD", "In Transit", "X-DLL2F", "Shipment Received at Facility"),
    "reached_destination": ("UD", "In Transit", "X-IBD3F", "Shipment Received at Destination"),
    "out_for_delivery": ("UD", "Dispatched", "X-DDD3FD", "Out for delivery"),
    "failed_attempt": ("UD", "Pending", "EOD-11", "Consignee Unavailable"),
    "delivered": ("DL", "Delivered", "EOD-38", "Delivered to consignee"),
    "rto_initiated": ("RT", "In Transit", "RT-101", "Return Accepted"),
    "rto_in_transit": ("RT", "In Transit", "RT-110", "Shipment in transit to origin"),
    "rto_delivered": ("DL", "RTO", "RD-AC", "Shipment returned to origin"),
    "lost": ("LT", "LOST", "LT-100", "Shipment lost in transit"),
    "cancelled": ("UD", "Not Picked", "X-PNP", "Pickup cancelled by seller"),
    "destroyed": ("LT", "Destroyed", "LT-103", "Shipment destroyed"),
    "unmapped": ("UD", "Misrouted", "X-MISR", "Shipment misrouted"),
    "no_scans": ("UD", "Manifested", "X-UCI", "Manifest uploaded"),
}
_EOD_CODES = (
    ("EOD-11", "Consignee Unavailable"),
    ("EOD-74", "Consignee refused to accept"),
    ("EOD-6", "Consignee address incomplete"),
    ("EOD-104", "Entry restricted, no response from consignee"),
)


def delhivery_time(ts: float | None, ms: bool = True) -> str | None:
    """Zone-less India time as Delhivery writes it, e.g. 2024-09-20T15:41:19.002 (isoformat,
    like `plain_time`, for speed)."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, IST)
    return moment.isoformat(timespec="milliseconds" if ms else "seconds")[:-6]


@dataclass(frozen=True)
class ExpressSettings:
    token: str = "demo-delhivery-token"


class _Express(CourierApi):
    """What the B2C and fallback paths share: waybill space, token and error shapes."""

    namespace = "delhivery"

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"detail": message}

    def over_quota(self, frees_in: float) -> Response:
        return firewall_block()

    def raw_status(self, step: str) -> str:
        status_type, status, _, _ = _STATUSES[step]
        return f"{status_type}/{status}"

    def _denied(self, request: Request) -> Response | None:
        if request.headers.get("authorization") == f"Token {self.settings.token}":
            return None
        return self.error(401, "Authentication credentials were not provided.")


class DelhiveryB2c(_Express, ListedCourierApi):
    name = "delhivery_b2c"
    aliases = ("delhivery",)

    def routes(self) -> list[Route]:
        return [("/delhivery/api/v1/packages/json/", "track", "GET", self.track)]

    @staticmethod
    def env(base: str, settings: ExpressSettings) -> dict[str, str]:
        return {
            "DELHIVERY_URL": f"{base}/delhivery/api/v1/packages/json/",
            "DELHIVERY_AUTH_TOKEN_B2C": settings.token,
        }

    def render(self, ship: Shipment, profile: Profile, events: Events) -> dict[str, Any]:
        return _shipment(ship, profile, events)

    async def track(self, request: Request) -> Response:
        if denied := self._denied(request):
            return denied
        waybill_list = request.query_params.get("waybill", "").split(",")
        waybills = [w.strip() for w in waybill_list if w.strip()]
        if len(waybills) > 50:
            raise BadRequest("Maximum 50 waybills allowed per request")
        shipments = self.sim.answers(self, waybills)
        if not shipments:
            return _error_answer("No such waybill or Order Id found")
        return JSONResponse({"ShipmentData": [{"Shipment": s} for s in shipments.values()]})


class DelhiveryFallback(_Express):
    name = "delhivery_fallback"

    def routes(self) -> list[Route]:
        return [("/delhivery-fallback/api/v1/packages/json/", "track", "GET", self.track)]

    @staticmethod
    def env(base: str, settings: ExpressSettings) -> dict[str, str]:
        return {"DELHIVERY_FALLBACK_URL": f"{base}/delhivery-fallback/api/v1/packages/json/"}

    async def track(self, request: Request) -> Response:
        if denied := self._denied(request):
            return denied
        waybill = request.query_params.get("wbn", "").strip()
        self.sim.stats[self.name].keys_requested += 1
        found = self.sim.lookup(self.name, waybill)
        if found is None:
            return _error_answer(f"Invalid AWB number: {waybill}")
        ship, profile, events = found
        step = events[-1][0]
        if time.time() - ship.booked_at >= 90 * DAY:
            return _error_answer("Waybill is very old, tracking data is no longer available")
        ended_at = ship.origin + profile.starts[len(events) - 1]
        if step in END_STEPS and self.sim.clock.now() - ended_at >= 7 * DAY:
            return _error_answer("Shipment reached its end state 7 or more days ago")
        return JSONResponse({"ShipmentData": [{"Shipment": _shipment(*found)}]})


def _waybill(rng: random.Random) -> str:
    return rng.choice(("1434", "1490", "2316", "2811")) + digits(rng, 10)


# A polled order's `courier_status`: Delhivery express records `<statustype>-<status>`.
_COURIER_STATUS = {
    Canonical.PENDING: "ud-pending",
    Canonical.IN_TRANSIT: "ud-in_transit",
    Canonical.OUT_FOR_DELIVERY: "ud-dispatched",
    Canonical.NDR: "ud-pending",
    Canonical.RTO: "dl-rto",
    Canonical.RTO_IN_TRANSIT: "rt-in_transit",
}

#: Both paths count against one firewall quota (750 requests in 5 minutes), named after B2C.
SIMULATOR = CourierSim(
    apis=(DelhiveryB2c, DelhiveryFallback),
    rate_limit=RateLimit(750, 300.0),
    settings=ExpressSettings(),
    orders={
        "delhivery_b2c": DemoOrders(
            share=0.50,
            booking_couriers=("Delhivery", "delhivery surface", "Delhivery Express", "DELHIVERY"),
            waybill=_waybill,
            courier_status=_COURIER_STATUS.__getitem__,
            reused_references=True,
        ),
        "delhivery_fallback": DemoOrders(
            share=0.10,
            booking_couriers=("Delhivery", "delhivery surface"),
            waybill=_waybill,
            courier_status=_COURIER_STATUS.__getitem__,
            most=30,  # paced, 3 workers 5 s apart: 30 orders take about 50 s
            reused_references=True,
        ),
    },
)


def _error_answer(message: str) -> JSONResponse:
    """Delhivery's "no answer" body, sent with HTTP 200."""
    rmk = (
        "Some error has occurred. Please contact client.support@delhivery.com "
        f"with error message- {message}"
    )
    return JSONResponse({"rmk": rmk, "Success": False, "Error": message})


def _shipment(ship: Shipment, profile: Profile, events: Events) -> dict[str, Any]:
    scans = []
    for step, at in events:
        scan_type, scan, code, instructions = _STATUSES[step]
        if step == "failed_attempt":
            code, instructions = _EOD_CODES[int(profile.attempt_draw * len(_EOD_CODES))]
        stamp = delhivery_time(at)
        scans.append(
            {
                "ScanDetail": {
                    "Scan": scan,
                    "ScanType": scan_type,
                    "StatusCode": code,
                    "ScanDateTime": stamp,
                    "StatusDateTime": stamp,
                    "ScannedLocation": profile.place(step).hub,
                    "Instructions": instructions,
                }
            }
        )
    last = scans[-1]["ScanDetail"]
    first = first_times(events)
    picked = first.get("picked_up")
    promised = f"{delhivery_time(events[0][1] + 5 * DAY, ms=False)[:10]}T23:59:59"
    destination = profile.destination
    return {
        "AWB": ship.key,
        "ReferenceNo": ship.reference_no,
        "OrderType": "COD" if profile.cod else "Pre-paid",
        "Origin": profile.origin.hub,
        "Destination": destination.city,
        "PickupLocation": "ORDERTRACK",
        "PickUpDate": delhivery_time(picked if picked is not None else events[0][1], ms=False),
        "PickedupDate": delhivery_time(picked, ms=False),
        "OriginRecieveDate": delhivery_time(first.get("in_transit")),
        "DestRecieveDate": delhivery_time(first.get("reached_destination")),
        "FirstAttemptDate": delhivery_time(first.get("out_for_delivery")),
        "DeliveryDate": delhivery_time(first.get("delivered")),
        "RTOStartedDate": delhivery_time(first.get("rto_initiated")),
        "ReturnedDate": delhivery_time(first.get("rto_delivered")),
        "ExpectedDeliveryDate": promised,
        "PromisedDeliveryDate": promised,
        "ReverseInTransit": False,
        "DispatchCount": sum(step == "out_for_delivery" for step, _ in events),
        "CODAmount": profile.amount if profile.cod else 0,
        "InvoiceAmount": profile.amount,
        "ChargedWeight": None,
        "Ewaybill": [],
        "Consignee": {
            "Name": profile.consignee,
            "City": destination.city,
            "PinCode": destination.pincode,
            "State": destination.state,
        },
        "Status": {
            "Status": last["Scan"],
            "StatusType": last["ScanType"],
            "StatusCode": last["StatusCode"],
            "StatusDateTime": last["StatusDateTime"],
            "StatusLocation": last["ScannedLocation"],
            "Instructions": last["Instructions"],
            "RecievedBy": profile.consignee if events[-1][0] == "delivered" else "",
        },
        "Scans": scans,
    }
