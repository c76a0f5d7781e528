"""Shiprocket, simulated: an e-mail/password login whose tokens live ten days, and tracking up
to 50 AWBs a POST, answered as a map from AWB to its tracking document."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ordertrack_dagster.devstack.simulator.base import (
    JSONResponse,
    ListedCourierApi,
    Route,
    awbs,
    bearer,
    json_body,
    jwt,
    plain_time,
)
from ordertrack_dagster.devstack.simulator.description import CourierSim, DemoOrders, digits
from ordertrack_dagster.devstack.simulator.lifecycle import (
    DAY,
    Events,
    Profile,
    Shipment,
    first_times,
)
from ordertrack_dagster.devstack.simulator.ratelimit import RateLimit

# Step -> (current_status, shipment_status, carrier code, activity, sr-status, sr-status-label);
# "no_scans" answers track_status 0.
_STATUSES = {
    "manifested": (
        "Out For Pickup",
        19,
        "DRC",
        "Pending Manifest Data Received",
        "NA",
        "NA",
    ),
    "picked_up": ("Picked Up", 42, "PUD", "PickDone", "42", "PICKED UP"),
    "in_transit": ("In Transit", 18, "IT", "InTransit Shipment added in Bag", "18", "IN TRANSIT"),
    "reached_destination": (
        "Reached at Destination Hub",
        38,
        "RAD",
        "Reached at Destination Shipment Reached At Destination",
        "38",
        "REACHED AT DESTINATION HUB",
    ),
    "out_for_delivery": (
        "Out For Delivery",
        17,
        "OFD",
        "Out for Delivery",
        "17",
        "OUT FOR DELIVERY",
    ),
    "failed_attempt": (
        "Undelivered",
        21,
        "UD",
        "Undelivered Consignee Unavailable",
        "21",
        "UNDELIVERED",
    ),
    "delivered": ("Delivered", 7, "DLVD", "Delivered", "7", "DELIVERED"),
    "rto_initiated": ("RTO Initiated", 9, "RT", "RTO Initiated", "9", "RTO INITIATED"),
    "rto_in_transit": ("RTO In Transit", 46, "RTIT", "RTO In Transit", "46", "RTO IN TRANSIT"),
    "rto_delivered": ("RTO Delivered", 10, "RTD", "RTO Delivered", "10", "RTO DELIVERED"),
    "lost": ("Lost", 12, "LOST", "Shipment Lost", "12", "LOST"),
    "cancelled": ("Canceled", 8, "CAN", "Shipment Cancelled", "8", "CANCELED"),
    "destroyed": ("Destroyed", 24, "DES", "Shipment Destroyed", "24", "DESTROYED"),
    "unmapped": ("Weird Status", 39, "WRD", "Weird Status", "39", "WEIRD STATUS"),
}
_NO_ACTIVITY = (
    "Aahh! There is no activities found in our DB. "
    "Please have some patience it will be updated soon."
)


@dataclass(frozen=True)
class ShiprocketSettings:
    email: str = "demo@ordertrack.example"
    password: str = "demo-shiprocket-password"
    token_ttl_s: float = 10 * DAY  # wall-clock seconds, whatever the time scale


class Shiprocket(ListedCourierApi):
    name = "shiprocket"
    namespace = "shiprocket"
    tokens: dict[str, float]  # token -> wall-clock expiry

    def reset(self) -> None:
        self.tokens = {}

    def routes(self) -> list[Route]:
        return [
            ("/shiprocket/v1/external/auth/login", "login", "POST", self.login),
            ("/shiprocket/v1/external/courier/track/awbs", "track", "POST", self.track),
        ]

    @staticmethod
    def env(base: str, settings: ShiprocketSettings) -> dict[str, str]:
        return {
            "SHIPROCKET_URL": f"{base}/shiprocket",
            "SHIPROCKET_EMAIL": settings.email,
            "SHIPROCKET_PASSWORD": settings.password,
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"message": message, "status_code": status}

    def raw_status(self, step: str) -> str:
        return "track_status 0" if step == "no_scans" else _STATUSES[step][0]

    async def login(self, request: Request) -> Response:
        body = await json_body(request)
        stats, settings = self.sim.stats[self.name], self.settings
        stats.logins += 1
        credentials = (settings.email, settings.password)
        if not isinstance(body, dict) or (body.get("email"), body.get("password")) != credentials:
            stats.failed_logins += 1
            return self.error(401, "Invalid email and password combination")
        token = jwt(settings.email)
        now = time.time()
        self.tokens[token] = now + settings.token_ttl_s
        return JSONResponse(
            {
                "id": 1001,
                "first_name": "Demo",
                "last_name": "Seller",
                "email": settings.email,
                "company_id": 42,
                "created_at": plain_time(now),
                "token": token,
            }
        )

    async def track(self, request: Request) -> Response:
        expiry = self.tokens.get(bearer(request))
        if expiry is None:
            return self.error(401, "Unauthenticated.")
        if expiry <= time.time():
            return self.error(401, "Token has expired")
        keys = await awbs(request, 50)
        return JSONResponse(self.sim.answers(self, keys))

    def render(self, ship: Shipment, profile: Profile, events: Events) -> dict[str, Any]:
        if events[-1][0] == "no_scans":
            return {"tracking_data": {"track_status": 0, "error": _NO_ACTIVITY}}
        activities = []
        for step, at in reversed(events):
            _, _, carrier_code, activity, sr_status, label = _STATUSES[step]
            place = profile.place(step)
            activities.append(
                {
                    "date": plain_time(at),
                    "status": carrier_code,
                    "activity": activity,
                    "location": f"{place.city.upper()}, {place.city}, {place.state.upper()}",
                    "sr-status": sr_status,
                    "sr-status-label": label,
                }
            )
        first = first_times(events)
        current_status, code = _STATUSES[events[-1][0]][:2]
        delivered = first.get("delivered")
        track = {
            "id": profile.number,
            "awb_code": ship.key,
            "courier_company_id": 51,
            "shipment_id": profile.number,
            "order_id": profile.number + 1,
            "pickup_date": plain_time(first.get("picked_up")),
            "delivered_date": plain_time(delivered),
            "weight": "0.50",
            "packages": profile.pieces,
            "current_status": current_status,
            "delivered_to": profile.destination.city if delivered is not None else None,
            "destination": profile.destination.city,
            "consignee_name": profile.consignee,
            "origin": profile.origin.city,
            "courier_agent_details": None,
            "courier_name": "Xpressbees Surface",
            "edd": None,
            "pod": "Available" if delivered is not None else "Not Available",
            "pod_status": "",
        }
        return {
            "tracking_data": {
                "track_status": 1,
                "shipment_status": code,
                "shipment_track": [track],
                "shipment_track_activities": activities,
                "track_url": f"https://shiprocket.co//tracking/{ship.key}",
                "etd": plain_time(events[0][1] + 5 * DAY),
                "qc_response": {"qc_image": "", "qc_failed_reason": ""},
            }
        }


SIMULATOR = CourierSim(
    apis=(Shiprocket,),
    rate_limit=RateLimit(3000, 300.0),
    settings=ShiprocketSettings(),
    orders={
        "shiprocket": DemoOrders(
            share=0.20,
            booking_couriers=("Shiprocket", "shiprocket", "Shiprocket Surface"),
            waybill=lambda rng: digits(rng, rng.randint(12, 15)),
            courier_status=str.upper,
        )
    },
)
