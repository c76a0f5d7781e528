"""Velocity, simulated: a login that hands out one valid token at a time and locks the account
after repeated failures, and tracking up to 45 AWBs a POST."""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ordertrack_dagster.devstack.simulator.base import (
    IST,
    JSONResponse,
    ListedCourierApi,
    Route,
    awbs,
    json_body,
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
from ordertrack_dagster.statuses import normalise_raw_status

# Step -> (shipment_status, activity).
_STATUSES = {
    "manifested": ("pickup_scheduled", "PICKUP SCHEDULED"),
    "picked_up": ("picked_up", "PICKED UP"),
    "in_transit": ("in_transit", "IN TRANSIT"),
    "reached_destination": ("in_transit", "REACHED DESTINATION HUB"),
    "out_for_delivery": ("out_for_delivery", "OUT FOR DELIVERY"),
    "failed_attempt": ("ndr_raised", "NDR RAISED - CONSIGNEE NOT AVAILABLE"),
    "delivered": ("delivered", "DELIVERED"),
    "rto_initiated": ("rto_initiated", "RTO INITIATED"),
    "rto_in_transit": ("rto_in_transit", "RTO IN TRANSIT"),
    "rto_delivered": ("rto_delivered", "RTO DELIVERED"),
    "lost": ("lost", "LOST"),
    "cancelled": ("cancelled", "CANCELLED"),
    "destroyed": ("destroyed", "DESTROYED"),
    "unmapped": ("misrouted", "MISROUTED"),
    "no_scans": ("pickup_scheduled", "PICKUP SCHEDULED"),
}


@dataclass(frozen=True)
class VelocitySettings:
    username: str = "demo-velocity"
    password: str = "demo-velocity-password"
    token_ttl_s: float = DAY  # wall-clock seconds, whatever the time scale
    max_failed_logins: int = 5
    lockout_s: float = 1800.0


@dataclass(slots=True)
class _Sessions:
    token: str = ""  # only the newest token is valid
    expiry: float = 0.0  # wall clock
    failures: int = 0
    locked_until: float = 0.0  # monotonic time


class Velocity(ListedCourierApi):
    name = "velocity"
    namespace = "velocity"
    sessions: _Sessions

    def reset(self) -> None:
        self.sessions = _Sessions()

    def routes(self) -> list[Route]:
        return [
            ("/velocity/custom/api/v1/auth-token", "login", "POST", self.login),
            ("/velocity/custom/api/v1/order-tracking", "track", "POST", self.track),
        ]

    @staticmethod
    def env(base: str, settings: VelocitySettings) -> dict[str, str]:
        return {
            "VELOCITY_URL": f"{base}/velocity",
            "VELOCITY_USERNAME": settings.username,
            "VELOCITY_PASSWORD": settings.password,
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"message": message}

    def raw_status(self, step: str) -> str:
        return _STATUSES[step][0]

    async def login(self, request: Request) -> Response:
        body = await json_body(request)
        stats, settings, sessions = self.sim.stats[self.name], self.settings, self.sessions
        stats.logins += 1
        if sessions.locked_until > time.monotonic():
            stats.failed_logins += 1
            return self.error(401, "Account locked after too many failed logins")
        credentials = (settings.username, settings.password)
        if (
            not isinstance(body, dict)
            or (body.get("username"), body.get("password")) != credentials
        ):
            stats.failed_logins += 1
            sessions.failures += 1
            if sessions.failures >= settings.max_failed_logins:
                sessions.locked_until = time.monotonic() + settings.lockout_s
                sessions.failures = 0
            return self.error(401, "Invalid username or password")
        sessions.failures = 0
        sessions.token = secrets.token_hex(24)
        sessions.expiry = time.time() + settings.token_ttl_s
        expires_at = datetime.fromtimestamp(sessions.expiry, IST).isoformat()
        return JSONResponse({"token": sessions.token, "expires_at": expires_at})

    async def track(self, request: Request) -> Response:
        sessions = self.sessions
        token = request.headers.get("authorization", "")
        if not token or token != sessions.token or sessions.expiry <= time.time():
            return self.error(401, "Invalid or expired token")
        keys = await awbs(request, 45)
        return JSONResponse({"result": self.sim.answers(self, keys)})

    def render(self, ship: Shipment, profile: Profile, events: Events) -> dict[str, Any]:
        activities = [
            {
                "date": plain_time(at),
                "activity": _STATUSES[step][1],
                "location": profile.place(step).city,
            }
            for step, at in reversed(events)
        ]
        status = _STATUSES[events[-1][0]][0]
        first = first_times(events)
        delivered = first.get("delivered")
        track = {
            "id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{profile.number}")),
            "awb_code": ship.key,
            "courier_company_id": "CARKX7WW6UNS8",
            "shipment_id": f"SHI{profile.number:X}",
            "order_id": f"ORD{profile.number + 1:X}",
            "pickup_date": plain_time(first.get("picked_up")),
            "delivered_date": plain_time(delivered),
            "weight": 0.5,
            "packages": profile.pieces,
            "current_status": status,
            "delivered_to": profile.destination.city if delivered is not None else None,
            "destination": profile.destination.city,
            "origin": profile.origin.city,
            "courier_agent_details": None,
        }
        return {
            "tracking_data": {
                "track_status": None,
                "shipment_status": status,
                "shipment_track": [track],
                "shipment_track_activities": activities,
                "track_url": f"https://shipfastt.in/track/{ship.key}",
            }
        }


SIMULATOR = CourierSim(
    apis=(Velocity,),
    rate_limit=RateLimit(3000, 300.0),
    settings=VelocitySettings(),
    orders={
        "velocity": DemoOrders(
            share=0.15,
            booking_couriers=("Velocity Express", "velocity", "Velocity"),
            waybill=lambda rng: rng.choice(("PD", "PV", "VX")) + digits(rng, 7),
            courier_status=lambda status: normalise_raw_status(status).lower(),
        )
    },
)
