"""Delhivery LTL (B2B), simulated: a login that locks the user out after a wrong password, and
tracking one LR number a GET in the legacy status strings. An unknown LR is answered with
HTTP 404 or 200 (`not_found_http_200_share`), as the live API does."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ordertrack_dagster.devstack.simulator.base import (
    CourierApi,
    JSONResponse,
    Route,
    bearer,
    json_body,
    jwt,
)
from ordertrack_dagster.devstack.simulator.delhivery import delhivery_time
from ordertrack_dagster.devstack.simulator.description import CourierSim, DemoOrders, digits
from ordertrack_dagster.devstack.simulator.lifecycle import DAY
from ordertrack_dagster.devstack.simulator.ratelimit import RateLimit
from ordertrack_dagster.statuses import normalise_raw_status

# Legacy strings: step -> (status, scan_remark); "cancelled" answers a sentence instead.
_STATUSES = {
    "manifested": ("MANIFESTED", "Manifest created"),
    "picked_up": ("PICKED_UP", "Shipment picked up from client"),
    "in_transit": ("IN_TRANSIT", "Shipment in transit"),
    "reached_destination": ("REACH_DESTINATION", "Shipment received at destination city"),
    "out_for_delivery": ("OFD", "Shipment out for delivery"),
    "failed_attempt": ("UNDELIVERED", "Consignee not available"),
    "delivered": ("DELIVERED", "Shipment delivered"),
    "rto_initiated": ("RTO", "Return to origin initiated"),
    "rto_in_transit": ("RTO_IN_TRANSIT", "Shipment in transit to origin"),
    "rto_delivered": ("RTO_DELIVERED", "Shipment returned to origin"),
    "lost": ("LOST", "Shipment lost"),
    "destroyed": ("DESTROYED", "Shipment destroyed"),
    "unmapped": ("MISROUTED", "Shipment misrouted"),
    "no_scans": ("MANIFESTED", "Manifest created"),
}


@dataclass(frozen=True)
class B2bSettings:
    username: str = "demo-b2b"
    password: str = "demo-b2b-password"
    token_ttl_s: float = DAY  # wall-clock seconds, whatever the time scale
    lockout_s: float = 600.0  # after one wrong password
    not_found_http_200_share: float = 0.5  # live Delhivery LTL answers both 404 and 200


@dataclass(slots=True)
class _Sessions:
    tokens: dict[str, float] = field(default_factory=dict)  # token -> wall-clock expiry
    locked_until: dict[str, float] = field(default_factory=dict)  # user -> monotonic time


class DelhiveryB2b(CourierApi):
    name = "delhivery_b2b"
    namespace = "delhivery_b2b"
    sessions: _Sessions

    def reset(self) -> None:
        self.sessions = _Sessions()

    def routes(self) -> list[Route]:
        return [
            ("/delhivery-b2b/ums/login", "login", "POST", self.login),
            ("/delhivery-b2b/lrn/track", "track", "GET", self.track),
        ]

    @staticmethod
    def env(base: str, settings: B2bSettings) -> dict[str, str]:
        return {
            "DELHIVERY_B2B_URL": f"{base}/delhivery-b2b",
            "DELHIVERY_B2B_USERNAME": settings.username,
            "DELHIVERY_B2B_PASSWORD": settings.password,
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"success": False, "error": {"code": status, "message": message}}

    def raw_status(self, step: str) -> str:
        return "cancelled" if step == "cancelled" else _STATUSES[step][0]

    async def login(self, request: Request) -> Response:
        body = await json_body(request)
        stats, settings = self.sim.stats[self.name], self.settings
        stats.logins += 1
        username = str(body.get("username", "")) if isinstance(body, dict) else ""
        password = body.get("password") if isinstance(body, dict) else None
        locked_for = self.sessions.locked_until.get(username, 0.0) - time.monotonic()
        if locked_for > 0:
            stats.failed_logins += 1
            message = f"User is locked. Try again after {math.ceil(locked_for / 60)} minutes."
            return self.error(401, message)
        if username != settings.username or password != settings.password:
            stats.failed_logins += 1
            self.sessions.locked_until[username] = time.monotonic() + settings.lockout_s
            return self.error(401, "Invalid username or password")
        token = jwt(username)
        self.sessions.tokens[token] = time.time() + settings.token_ttl_s
        return JSONResponse({"success": True, "data": {"jwt": token}})

    async def track(self, request: Request) -> Response:
        if self.sessions.tokens.get(bearer(request), 0.0) <= time.time():
            return self.error(401, "Token expired")
        lrnum = request.query_params.get("lrnum", "").strip()
        self.sim.stats[self.name].keys_requested += 1
        found = self.sim.lookup(self.name, lrnum)
        request_id = str(uuid.uuid4())
        if found is None:
            share = self.settings.not_found_http_200_share
            status = 200 if self.sim.rng.random() < share else 404
            return JSONResponse(self.error_body(404, "Data not found."), status_code=status)
        ship, profile, events = found
        step, at = events[-1]
        if step == "cancelled":
            text = f"For LR {ship.key}, Shipment has been cancelled by the client."
            return JSONResponse({"success": True, "request_id": request_id, "data": text})
        status_text, remark = _STATUSES[step]
        wbn = {
            "status": status_text,
            "location": profile.place(step).hub,
            "scan_remark": remark,
            "scan_timestamp": delhivery_time(at, ms=False),
            "manifested_date": delhivery_time(events[0][1], ms=False),
        }
        wbns = [{"wbn": f"81{profile.number}{i:02d}", **wbn} for i in range(profile.pieces)]
        data = {"lrnum": ship.key, "status": status_text, "mcount": profile.pieces, "wbns": wbns}
        return JSONResponse({"success": True, "request_id": request_id, "data": data})


SIMULATOR = CourierSim(
    apis=(DelhiveryB2b,),
    rate_limit=RateLimit(500, 300.0),
    settings=B2bSettings(),
    orders={
        "delhivery_b2b": DemoOrders(
            share=0.05,
            booking_couriers=("Delhivery B2B", "Delhivery LTL", "delhivery surface"),
            waybill=lambda rng: "8100" + digits(rng, 9),
            courier_status=normalise_raw_status,
            lr_number=lambda rng: "22" + digits(rng, 7),
            value_range=(15_000.0, 250_000.0),
        )
    },
)
