"""What the simulated courier APIs share: the JSON response, request reading, token shapes,
India time, and `CourierApi`, the base class each courier module fills in with its routes,
answers and error shapes."""

from __future__ import annotations

import base64
import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response

from ordertrack_dagster.devstack.simulator.lifecycle import Events, Profile, Shipment
from ordertrack_dagster.devstack.simulator.ratelimit import retry_after

if TYPE_CHECKING:
    from ordertrack_dagster.devstack.simulator.core import CourierSimulator
    from ordertrack_dagster.devstack.simulator.description import CourierSim

IST = timezone(timedelta(hours=5, minutes=30), "IST")

Handler = Callable[[Request], Awaitable[Response]]


class JSONResponse(StarletteJSONResponse):
    """JSON written by orjson: a 50-shipment answer is ~80 KB, and the standard library's
    encoder cost the simulator (one event loop) more than building the answer itself."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


class BadRequest(Exception):
    """A malformed request; answered with HTTP 400 and the message."""


def error(status: int, message: str) -> JSONResponse:
    """The simulator's own error body (admin API, malformed requests)."""
    return JSONResponse({"error": message}, status_code=status)


async def json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc


def jwt(subject: str) -> str:
    """A random token shaped like a JWT (header.payload.signature)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = part(json.dumps({"sub": subject, "jti": secrets.token_hex(8)}).encode())
    return f"{header}.{payload}.{part(secrets.token_bytes(32))}"


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""


async def awbs(request: Request, most: int) -> list[str]:
    """The AWBs of a POST body ``{"awbs": [...]}`` holding at most `most` of them."""
    body = await json_body(request)
    keys = body.get("awbs") if isinstance(body, dict) else None
    if not isinstance(keys, list):
        raise BadRequest('expected {"awbs": [...]}')
    if len(keys) > most:
        raise BadRequest(f"The awbs may not have more than {most} items.")
    return [str(a) for a in keys]


# isoformat() rather than strftime(): answers hold dozens of timestamps and it is much faster.
def plain_time(ts: float | None) -> str | None:
    """India time as Shiprocket and Velocity write it, e.g. 2022-07-19 11:37:00."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, IST).isoformat(sep=" ", timespec="seconds")[:-6]


def utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


Route = tuple[str, str, str, Handler]
"""(path, endpoint: "track" or "login", HTTP method, handler) of one courier endpoint."""


class CourierApi(ABC):
    """One simulated courier API. The simulator wraps every handler with the shared plumbing
    (latency, the rate limit of its simulated courier, queued faults, stats); the rest is the
    courier's own."""

    name: ClassVar[str]  # as in the admin API, faults and stats
    namespace: ClassVar[str]  # the waybill space it answers from
    aliases: ClassVar[tuple[str, ...]] = ()  # other names registration accepts for it

    def __init__(self, sim: CourierSimulator, courier_sim: CourierSim) -> None:
        self.sim = sim
        self.courier_sim = courier_sim  # the simulated courier it is one API of
        self.reset()

    @property
    def settings(self) -> Any:
        """Its simulated courier's own settings (`CourierSim.settings`), as now changed."""
        return self.sim.settings.couriers[self.courier_sim.name]

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints faults can be queued for: "track", and "login" where it logs in."""
        return tuple(endpoint for _, endpoint, _, _ in self.routes())

    @abstractmethod
    def routes(self) -> list[Route]: ...

    @staticmethod
    @abstractmethod
    def env(base: str, settings: Any) -> dict[str, str]:
        """The product's environment variables that point its client at this API, given its
        simulated courier's settings."""

    @abstractmethod
    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """An error in the courier's own body shape."""

    def error(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> JSONResponse:
        return JSONResponse(self.error_body(status, message), status_code=status, headers=headers)

    @abstractmethod
    def raw_status(self, step: str) -> str:
        """The status string the courier's answer carries for a step."""

    def over_quota(self, frees_in: float) -> Response:
        """The answer to a request over the rate limit."""
        headers = {"Retry-After": retry_after(frees_in, "seconds")}
        return self.error(429, "Too Many Requests", headers)

    def reset(self) -> None:  # noqa: B027 (most couriers keep sessions; Delhivery has none)
        """Forget sessions (tokens, lock-outs)."""


class ListedCourierApi(CourierApi):
    """A courier asked for lists of keys: it answers from each shipment's rendered answer,
    rendered at registration (as a courier stores its tracking document) and again only
    when the shipment has moved on."""

    @abstractmethod
    def render(self, ship: Shipment, profile: Profile, events: Events) -> dict[str, Any]: ...
