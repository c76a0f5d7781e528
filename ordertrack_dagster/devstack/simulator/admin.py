"""The admin API under ``/_admin/`` (register shipments, force steps, queue faults, stats,
settings, the clock) and `SimulatorAdmin`, its synchronous client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ordertrack_dagster.devstack.simulator.base import (
    BadRequest,
    Handler,
    JSONResponse,
    error,
    json_body,
    utc_iso,
)
from ordertrack_dagster.devstack.simulator.core import CourierSimulator
from ordertrack_dagster.devstack.simulator.faults import FAULT_KINDS, Fault


class AdminApi:
    """Handlers of the admin API for one simulator."""

    def __init__(self, sim: CourierSimulator) -> None:
        self.sim = sim

    def routes(self) -> list[Route]:
        return [
            Route("/_admin/shipments", _admin(self.register), methods=["POST"]),
            Route("/_admin/shipments/{courier}/{key}", _admin(self.shipment), methods=["GET"]),
            Route(
                "/_admin/shipments/{courier}/{key}/step", _admin(self.shipment), methods=["POST"]
            ),
            Route("/_admin/faults", _admin(self.faults), methods=["POST"]),
            Route("/_admin/stats", _admin(self.stats), methods=["GET"]),
            Route("/_admin/reset", _admin(self.reset), methods=["POST"]),
            Route("/_admin/settings", _admin(self.settings), methods=["GET", "POST"]),
            Route("/_admin/clock", _admin(self.clock), methods=["POST"]),
            Route("/_admin/health", _admin(self.health), methods=["GET"]),
        ]

    async def register(self, request: Request) -> Response:
        body = await json_body(request)
        if not isinstance(body, list):
            raise BadRequest("expected a list of shipments")
        registered = self.sim.register(body)
        return JSONResponse({"registered": registered, "total": self.sim.shipments.total()})

    async def shipment(self, request: Request) -> Response:
        courier, key = request.path_params["courier"], request.path_params["key"]
        if courier not in self.sim.shipments.namespaces:
            raise BadRequest(f"unknown courier {courier!r}")
        if not self.sim.shipments.knows(courier, key):
            return error(404, f"no {courier} shipment {key!r}")
        if request.method == "POST":
            body = await json_body(request)
            if not isinstance(body, dict) or "step" not in body:
                raise BadRequest('expected {"step": name}')
            self.sim.force_step(courier, key, str(body["step"]), bool(body.get("hold", True)))
        return JSONResponse(self.sim.describe(courier, key))

    async def faults(self, request: Request) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("expected an object")
        courier, kind, endpoint = (
            body.get("courier"),
            body.get("kind"),
            body.get("endpoint", "track"),
        )
        couriers = tuple(self.sim.couriers)
        if courier not in couriers or kind not in FAULT_KINDS:
            raise BadRequest(f"courier must be one of {couriers}, kind one of {FAULT_KINDS}")
        if endpoint not in self.sim.couriers[courier].endpoints:
            raise BadRequest(f"{courier} has no {endpoint!r} endpoint")
        fmt = body.get("retry_after_format", "seconds")
        if fmt not in ("seconds", "unix", "http_date"):
            raise BadRequest("retry_after_format must be seconds, unix or http_date")
        fault = Fault(
            kind=kind,
            remaining=int(_number(body, "count", 1)),
            seconds=_number(body, "seconds", 35.0),
            retry_after=_number(body, "retry_after", 60.0),
            retry_after_format=fmt,
        )
        self.sim.faults.add(courier, endpoint, fault)
        return JSONResponse({"queued": asdict(fault), "courier": courier, "endpoint": endpoint})

    async def stats(self, request: Request) -> Response:
        couriers = {}
        for courier, stats in self.sim.stats.items():
            quota = self.sim.couriers[courier].courier_sim.name
            couriers[courier] = {
                "requests": stats.requests,
                "logins": stats.logins,
                "failed_logins": stats.failed_logins,
                "keys_requested": stats.keys_requested,
                "max_in_flight": stats.max_in_flight,
                "status_codes": {str(code): n for code, n in sorted(stats.status_codes.items())},
                "max_window_requests": self.sim.windows[quota].max_seen,
            }
        by_namespace = self.sim.shipments.by_namespace
        shipments = {namespace: len(s) for namespace, s in by_namespace.items()}
        return JSONResponse({"couriers": couriers, "shipments": shipments})

    async def reset(self, request: Request) -> Response:
        self.sim.reset()
        return JSONResponse({"reset": True})

    async def settings(self, request: Request) -> Response:
        if request.method == "POST":
            body = await json_body(request)
            if not isinstance(body, dict):
                raise BadRequest("expected an object")
            try:
                self.sim.update_settings(body)
            except (TypeError, ValueError) as exc:
                raise BadRequest(str(exc)) from exc
        return JSONResponse(asdict(self.sim.settings))

    async def clock(self, request: Request) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("expected an object")
        advance_s = _number(body, "advance_s", 0.0)
        if advance_s < 0:
            raise BadRequest("advance_s must not be negative")
        self.sim.clock.advance(advance_s)
        return JSONResponse({"now": utc_iso(time.time())})

    async def health(self, request: Request) -> Response:
        total = self.sim.shipments.total()
        return JSONResponse({"status": "ok", "now": utc_iso(time.time()), "shipments": total})


def _number(body: Mapping[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BadRequest(f"{name} must be a number")
    return float(value)


def _admin(handler: Handler) -> Handler:
    """Answer an admin handler's bad requests with 400."""

    async def serve(request: Request) -> Response:
        try:
            return await handler(request)
        except BadRequest as exc:
            return error(400, str(exc))

    return serve


def _encode_time(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


class SimulatorAdmin:
    """Synchronous client of the admin API, for tests, the demo seeder and the benchmark."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        # a new connection per call: a kept-alive one the server closes while idle is reset
        # under the next request (seen as a flaky ECONNRESET while seeding a test)
        self._http = httpx.Client(
            base_url=f"{base_url.rstrip('/')}/_admin",
            timeout=timeout,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def __enter__(self) -> SimulatorAdmin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: object = None) -> Any:
        content = None if body is None else json.dumps(body, default=_encode_time)
        headers = {"Content-Type": "application/json"}
        response = self._http.request(method, path, content=content, headers=headers)
        response.raise_for_status()
        return response.json()

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def register_shipments(
        self, shipments: Iterable[Mapping[str, Any]], chunk_size: int = 25_000
    ) -> int:
        """Register shipments shaped as `ShipmentSpec`, in bulk requests of `chunk_size`;
        returns how many were stored."""
        total, chunk = 0, []
        for shipment in shipments:
            chunk.append(dict(shipment))
            if len(chunk) == chunk_size:
                total += self._call("POST", "/shipments", chunk)["registered"]
                chunk = []
        if chunk:
            total += self._call("POST", "/shipments", chunk)["registered"]
        return total

    def shipment(self, courier: str, key: str) -> dict[str, Any]:
        return self._call("GET", f"/shipments/{courier}/{quote(key, safe='')}")

    def force_step(self, courier: str, key: str, step: str, hold: bool = True) -> dict[str, Any]:
        path = f"/shipments/{courier}/{quote(key, safe='')}/step"
        return self._call("POST", path, {"step": step, "hold": hold})

    def inject_fault(
        self, courier: str, kind: str, count: int = 1, **params: Any
    ) -> dict[str, Any]:
        """Queue a fault for the courier's next `count` requests (params: endpoint, seconds,
        retry_after, retry_after_format)."""
        return self._call(
            "POST", "/faults", {"courier": courier, "kind": kind, "count": count, **params}
        )

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def settings(self) -> dict[str, Any]:
        return self._call("GET", "/settings")

    def update_settings(self, **changes: Any) -> dict[str, Any]:
        return self._call("POST", "/settings", changes)

    def advance_clock(self, seconds: float) -> str:
        """Move every life cycle `seconds` simulated seconds ahead (their past scans move back,
        none into the future); returns the simulator's wall-clock now."""
        return self._call("POST", "/clock", {"advance_s": seconds})["now"]
