"""Stand-in courier server speaking the live wire formats of Delhivery (B2C, fallback, B2B),
Shiprocket and Velocity, so the product can be demonstrated, tested and benchmarked offline.

Shipments are registered through an admin API (``/_admin/``) and move through scripted life
cycles compressed in time: they move ``time_scale`` times faster than real shipments (default
3600, so a day-long transit takes 24 seconds; 0 holds every shipment at its step). The wall
clock is the only clock. Step ``i`` of a shipment becomes current at
``origin + starts[i] / time_scale``, where the origin is the registration time moved back by
``offset_s / time_scale`` (``offset_s``: simulated seconds of its life cycle already run), and
moved again by forcing a step or by ``POST /_admin/clock`` (every life cycle jumps ahead by
``advance_s`` simulated seconds, its past scans moving back accordingly). Every timestamp in an
answer is such a moment, in India time, so answers never carry a time later than now; only the
promised delivery dates lie ahead, as at the real couriers. ``booked_at`` is reported as given
and ages the waybill (the fallback's "very old" answer, on the wall clock) but never moves the
life cycle, so a shipment booked days ago still starts at its first step unless ``offset_s``
says otherwise. The fallback's "end state 7 or more days ago" answer counts simulated days.
Changing ``time_scale`` keeps every shipment at its step and re-spaces its past scans at the
new speed (while frozen, at the last non-zero speed).

Token lifetimes, lock-outs and rate limits are wall-clock durations, as at the couriers, so
tokens outlive long runs at any speed; settings can shorten them to exercise expiry. Answers
are built on demand from each shipment's position, so a shipment costs one dict entry and a
request costs dict lookups only.

Run it with ``python -m ordertrack_dagster.devstack.simulator --port 8765``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import itertools
import json
import math
import random
import secrets
import socket
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta, timezone
from email.utils import formatdate
from statistics import NormalDist
from typing import Any, Required, TypedDict, TypeVar
from urllib.parse import quote

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response
from starlette.routing import Route


class JSONResponse(StarletteJSONResponse):
    """JSON written by orjson: a 50-shipment answer is ~80 KB, and the standard library's
    encoder cost the simulator (one event loop) more than building the answer itself."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


COURIERS = ("delhivery_b2c", "delhivery_fallback", "delhivery_b2b", "shiprocket", "velocity")
"""Courier names used by the admin API, faults and stats."""

_DELHIVERY_EXPRESS = ("delhivery_b2c", "delhivery_fallback")
# Both Delhivery express endpoints answer from one waybill space (registration may also name
# it "delhivery") and share one firewall quota.
_NAMESPACE = {c: "delhivery" if c in _DELHIVERY_EXPRESS else c for c in COURIERS}
_NAMESPACE["delhivery"] = "delhivery"
_RATE_BUCKET = {c: "delhivery_b2c" if c in _DELHIVERY_EXPRESS else c for c in COURIERS}

SCENARIOS: Mapping[str, tuple[str, ...]] = {
    "forward": (
        "manifested",
        "picked_up",
        "in_transit",
        "reached_destination",
        "out_for_delivery",
        "delivered",
    ),
    "failed_attempt": (
        "manifested",
        "picked_up",
        "in_transit",
        "reached_destination",
        "out_for_delivery",
        "failed_attempt",
        "out_for_delivery",
        "delivered",
    ),
    "rto": (
        "manifested",
        "picked_up",
        "in_transit",
        "reached_destination",
        "out_for_delivery",
        "failed_attempt",
        "out_for_delivery",
        "failed_attempt",
        "rto_initiated",
        "rto_in_transit",
        "rto_delivered",
    ),
    "lost": ("manifested", "picked_up", "in_transit", "lost"),
    "cancelled": ("manifested", "cancelled"),
    "destroyed": ("manifested", "picked_up", "in_transit", "destroyed"),
    "stuck": ("manifested", "picked_up", "in_transit"),
    "unmapped": ("manifested", "picked_up", "in_transit", "unmapped"),
    "no_scans": ("no_scans",),
}
"""Life cycle of each scenario; the last step is kept for ever."""

# Mean time spent in each step, in simulated hours (varied per shipment by 0.7-1.4x).
_STEP_HOURS = {
    "manifested": 6.0,
    "picked_up": 3.0,
    "in_transit": 30.0,
    "reached_destination": 8.0,
    "out_for_delivery": 5.0,
    "failed_attempt": 20.0,
    "rto_initiated": 10.0,
    "rto_in_transit": 60.0,
    "delivered": 24.0,
    "rto_delivered": 24.0,
    "lost": 24.0,
    "cancelled": 24.0,
    "destroyed": 24.0,
    "unmapped": 24.0,
    "no_scans": 24.0,
}
STEPS = tuple(_STEP_HOURS)
"""Every step name a shipment can be at (or be forced to)."""
END_STEPS = frozenset({"delivered", "rto_delivered", "lost", "cancelled", "destroyed"})

# Where each step's scan happens: at the origin, a transit hub or the destination.
_STEP_PLACE = {
    "manifested": "origin",
    "picked_up": "origin",
    "in_transit": "hub",
    "reached_destination": "destination",
    "out_for_delivery": "destination",
    "failed_attempt": "destination",
    "delivered": "destination",
    "rto_initiated": "destination",
    "rto_in_transit": "hub",
    "rto_delivered": "origin",
    "lost": "hub",
    "cancelled": "origin",
    "destroyed": "hub",
    "unmapped": "hub",
    "no_scans": "origin",
}

# Delhivery express: step -> (StatusType, Status, StatusCode, Instructions); a failed
# attempt's code and text are drawn per shipment from _EOD_CODES.
_DELHIVERY = {
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

# Delhivery LTL legacy strings: step -> (status, scan_remark); "cancelled" answers a string.
_B2B = {
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

# Shiprocket: step -> (current_status, shipment_status, carrier code, activity, sr-status,
# sr-status-label); "no_scans" answers track_status 0.
_SHIPROCKET = {
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
_SHIPROCKET_NO_ACTIVITY = (
    "Aahh! There is no activities found in our DB. "
    "Please have some patience it will be updated soon."
)

# Velocity: step -> (shipment_status, activity).
_VELOCITY = {
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


@dataclass(frozen=True, slots=True)
class _Place:
    hub: str
    city: str
    state: str
    pincode: int


_PLACES = (
    _Place("Amritsar_VerkaBypss_I (Punjab)", "Amritsar", "Punjab", 143001),
    _Place("Delhi_DLEIndustrialArea_D (Delhi)", "Delhi", "Delhi", 110015),
    _Place("Bhiwandi_Mankoli_HB (Maharashtra)", "Bhiwandi", "Maharashtra", 421302),
    _Place("Pune_Kharadi_D (Maharashtra)", "Pune", "Maharashtra", 411014),
    _Place("Jaipur_Hub (Rajasthan)", "Jaipur", "Rajasthan", 302001),
    _Place("Bengaluru_Bomsndra_HB (Karnataka)", "Bengaluru", "Karnataka", 560099),
    _Place("Hyderabad_Shamshabad_HB (Telangana)", "Hyderabad", "Telangana", 500108),
    _Place("Kolkata_Dankuni_HB (West Bengal)", "Kolkata", "West Bengal", 712311),
    _Place("Chennai_Poonamallee_HB (Tamil Nadu)", "Chennai", "Tamil Nadu", 600056),
    _Place("Ahmedabad_Changodar_HB (Gujarat)", "Ahmedabad", "Gujarat", 382213),
)
_ROUTES = tuple(itertools.permutations(_PLACES, 3))  # (origin, destination, transit hub)
_CONSIGNEES = ("R. Sharma", "Priya Nair", "Amit Verma", "Sneha Reddy", "Karan Mehta", "Anjali Das")
_IST = timezone(timedelta(hours=5, minutes=30), "IST")
_DAY = 86400.0
_DEFAULT_TIME_SCALE = 3600.0

FAULT_KINDS = (
    "http_500",
    "http_502",
    "http_503",
    "timeout",
    "html",
    "xml",
    "truncated_json",
    "rate_limited",
    "forbidden",
    "token_expired",
    "empty",
)
"""Fault kinds the admin API can queue for a courier's next requests."""

_FIREWALL_PAGE = (
    "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n"
    "<center><h1>403 Forbidden</h1></center>\r\n"
    "<hr><center>Request blocked by web application firewall</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class RateLimit:
    """A quota of `limit` requests per client IP in any trailing `window_s` wall-clock seconds."""

    limit: int
    window_s: float
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.limit < 0 or self.window_s <= 0:
            raise ValueError("a rate limit needs limit >= 0 and window_s > 0")


def _default_rate_limits() -> dict[str, RateLimit]:
    return {
        "delhivery_b2c": RateLimit(750, 300.0),  # shared with delhivery_fallback
        "delhivery_b2b": RateLimit(500, 300.0),
        "shiprocket": RateLimit(3000, 300.0),
        "velocity": RateLimit(3000, 300.0),
    }


@dataclass(frozen=True)
class SimulatorSettings:
    """Behaviour of the simulator; every field can also be changed at run time."""

    latency_mean_ms: float = 130.0  # 0 disables the artificial latency
    latency_p99_ms: float = 530.0
    time_scale: float = _DEFAULT_TIME_SCALE  # how much faster than real shipments move; 0 holds
    seed: int = 1
    rate_limits: dict[str, RateLimit] = field(default_factory=_default_rate_limits)
    b2b_not_found_http_200_share: float = 0.5  # live Delhivery LTL answers both 404 and 200
    delhivery_token: str = "demo-delhivery-token"
    b2b_username: str = "demo-b2b"
    b2b_password: str = "demo-b2b-password"
    shiprocket_email: str = "demo@ordertrack.example"
    shiprocket_password: str = "demo-shiprocket-password"
    velocity_username: str = "demo-velocity"
    velocity_password: str = "demo-velocity-password"
    # Token lifetimes and lock-outs: wall-clock seconds, whatever the time scale.
    b2b_token_ttl_s: float = _DAY
    shiprocket_token_ttl_s: float = 10 * _DAY
    velocity_token_ttl_s: float = _DAY
    b2b_lockout_s: float = 600.0
    velocity_max_failed_logins: int = 5
    velocity_lockout_s: float = 1800.0

    def __post_init__(self) -> None:
        lognormal_params(self.latency_mean_ms, self.latency_p99_ms)
        if self.time_scale < 0:
            raise ValueError("time_scale must not be negative")
        if set(self.rate_limits) != set(_RATE_BUCKET.values()):
            raise ValueError(f"rate_limits needs exactly {sorted(set(_RATE_BUCKET.values()))}")


class ShipmentSpec(TypedDict, total=False):
    """One shipment for ``POST /_admin/shipments``."""

    courier: Required[str]  # one of COURIERS, or "delhivery" (same as delhivery_b2c)
    tracking_key: Required[str]  # AWB, or LR number for delhivery_b2b
    order_id: Required[str]
    booked_at: str | datetime  # ISO time, zone-less means UTC; default now; reported only
    scenario: str  # a SCENARIOS key; default "forward"
    # Simulated seconds of the life cycle already run at registration; default 0 (first step);
    # negative: the courier learns of the shipment that much later.
    offset_s: float
    reference_no: str  # Delhivery ReferenceNo, when it must differ from order_id (reused waybill)


def lognormal_params(mean_ms: float, p99_ms: float) -> tuple[float, float] | None:
    """(mu, sigma) of the log-normal latency with this mean and 99th percentile, in ms."""
    if mean_ms == 0:
        return None
    if mean_ms < 0 or p99_ms < mean_ms:
        raise ValueError("latency needs 0 <= mean <= p99")
    z = NormalDist().inv_cdf(0.99)
    discriminant = z * z - 2 * math.log(p99_ms / mean_ms)
    if discriminant < 0:
        raise ValueError("latency p99 is too far above the mean for a log-normal distribution")
    sigma = z - math.sqrt(discriminant)
    return math.log(mean_ms) - sigma * sigma / 2, sigma


def simulator_env(base_url: str, settings: SimulatorSettings | None = None) -> dict[str, str]:
    """Environment that points the product's courier clients at a simulator."""
    s = settings or SimulatorSettings()
    base = base_url.rstrip("/")
    return {
        "DELHIVERY_URL": f"{base}/delhivery/api/v1/packages/json/",
        "DELHIVERY_FALLBACK_URL": f"{base}/delhivery-fallback/api/v1/packages/json/",
        "DELHIVERY_B2B_URL": f"{base}/delhivery-b2b",
        "SHIPROCKET_URL": f"{base}/shiprocket",
        "VELOCITY_URL": f"{base}/velocity",
        "DELHIVERY_AUTH_TOKEN_B2C": s.delhivery_token,
        "DELHIVERY_B2B_USERNAME": s.b2b_username,
        "DELHIVERY_B2B_PASSWORD": s.b2b_password,
        "SHIPROCKET_EMAIL": s.shiprocket_email,
        "SHIPROCKET_PASSWORD": s.shiprocket_password,
        "VELOCITY_USERNAME": s.velocity_username,
        "VELOCITY_PASSWORD": s.velocity_password,
    }


class _Clock:
    """Life-cycle time (simulated seconds, where shipments' steps are placed) and the wall-clock
    moment each life-cycle moment is shown as.

    Life-cycle time runs `scale` times as fast as the wall clock. Its moments are shown through
    one linear map of slope `1 / pace` (`pace`: the scale, or the last non-zero one while
    frozen) that meets the current life-cycle time at now, or at the moment of freezing. So a
    moment already reached is never shown later than now, and a jump or a new speed costs O(1)
    whatever the number of shipments.
    """

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self._pace = scale or _DEFAULT_TIME_SCALE
        self._wall0 = time.time()
        self._sim0 = 0.0
        self.version = 0  # changes whenever the moments shown for life-cycle times change

    def now(self) -> float:
        """Life-cycle time now."""
        return self._sim0 + (time.time() - self._wall0) * self.scale

    def wall(self, sim: float) -> float:
        """Wall-clock epoch seconds shown for life-cycle time `sim` (capped at now)."""
        return min(self._wall0 + (sim - self._sim0) / self._pace, time.time())

    def set_scale(self, scale: float) -> None:
        """Change the speed from now on; shipments keep their steps."""
        if scale == self.scale:
            return
        self._sim0, self._wall0 = self.now(), time.time()
        self.scale = scale
        self._pace = scale or self._pace
        self.version += 1

    def advance(self, seconds: float) -> None:
        """Move every life cycle `seconds` ahead; their past moments move back by
        `seconds / pace` on the wall clock."""
        self._sim0 += seconds
        self.version += 1


@dataclass(slots=True)
class _Shipment:
    key: str
    order_id: str
    reference_no: str
    scenario: str
    booked_at: float  # wall-clock epoch seconds; reported, never moves the life cycle
    origin: float  # life-cycle time its first step starts: registration - offset, or forced
    path: tuple[str, ...]
    pinned: int | None = None  # index of a forced step the shipment is held at


@dataclass(frozen=True, slots=True)
class _Profile:
    """Per-shipment details drawn from a seeded generator, so every answer agrees."""

    origin: _Place
    destination: _Place
    hub: _Place
    consignee: str
    cod: bool
    amount: int
    eod: tuple[str, str]
    pieces: int
    number: int
    starts: tuple[float, ...]  # offset of each path step from the life-cycle origin

    def place(self, step: str) -> _Place:
        return getattr(self, _STEP_PLACE[step])


@dataclass(slots=True)
class _Fault:
    kind: str
    remaining: int
    seconds: float
    retry_after: float
    retry_after_format: str


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    logins: int = 0
    failed_logins: int = 0
    keys_requested: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    status_codes: Counter[int] = field(default_factory=Counter)


class _RateWindow:
    """Sliding-window log of request times per client IP for one quota."""

    def __init__(self) -> None:
        self.hits: dict[str, deque[float]] = defaultdict(deque)
        self.max_seen = 0

    def record(self, ip: str, now: float, window_s: float) -> tuple[int, float]:
        """Count a request; return the requests in the trailing window and when one leaves."""
        hits = self.hits[ip]
        while hits and hits[0] <= now - window_s:
            hits.popleft()
        hits.append(now)
        self.max_seen = max(self.max_seen, len(hits))
        return len(hits), hits[0] + window_s - now


@dataclass(slots=True)
class _Sessions:
    b2b_tokens: dict[str, float] = field(default_factory=dict)  # token -> wall-clock expiry
    b2b_locked_until: dict[str, float] = field(default_factory=dict)  # user -> monotonic time
    shiprocket_tokens: dict[str, float] = field(default_factory=dict)
    velocity_token: str = ""  # only the newest token is valid
    velocity_expiry: float = 0.0
    velocity_failures: int = 0
    velocity_locked_until: float = 0.0


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    """A malformed request; answered with HTTP 400 and the message."""


# isoformat() rather than strftime(): answers hold dozens of timestamps and it is much faster.
def _delhivery_time(ts: float | None, ms: bool = True) -> str | None:
    """Zone-less India time as Delhivery writes it, e.g. 2024-09-20T15:41:19.002."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, _IST)
    return moment.isoformat(timespec="milliseconds" if ms else "seconds")[:-6]


def _plain_time(ts: float | None) -> str | None:
    """India time as Shiprocket and Velocity write it, e.g. 2022-07-19 11:37:00."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, _IST).isoformat(sep=" ", timespec="seconds")[:-6]


def _utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _parse_time(value: object) -> float:
    """Epoch seconds of an ISO timestamp; zone-less means UTC."""
    if not isinstance(value, str):
        raise ValueError("timestamps must be ISO strings")
    parsed = datetime.fromisoformat(value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise _BadRequest(f"body is not JSON: {exc}") from exc


_T = TypeVar("_T")


def _pick(draw: Callable[[], float], options: Sequence[_T]) -> _T:
    return options[int(draw() * len(options))]


def _first_times(events: list[tuple[str, float]]) -> dict[str, float]:
    first: dict[str, float] = {}
    for step, at in events:
        first.setdefault(step, at)
    return first


def _retry_after(seconds: float, fmt: str) -> str:
    """A Retry-After value in one of the forms couriers send: seconds, Unix time or HTTP date."""
    if fmt == "http_date":
        return formatdate(time.time() + seconds, usegmt=True)
    if fmt == "unix":
        return str(int(time.time() + seconds))
    return str(max(1, math.ceil(seconds)))


def _courier_error(
    courier: str, status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error in the courier's own body shape."""
    body: dict[str, Any]
    if courier == "delhivery_b2b":
        body = {"success": False, "error": {"code": status, "message": message}}
    elif courier == "shiprocket":
        body = {"message": message, "status_code": status}
    elif courier == "velocity":
        body = {"message": message}
    else:
        body = {"detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _firewall_block() -> Response:
    """Delhivery's answer over its quota: a firewall page, not a 429."""
    return Response(_FIREWALL_PAGE, status_code=403, media_type="text/html")


def _fault_response(courier: str, fault: _Fault) -> Response:
    """The answer of a fault that replaces the courier's answer entirely."""
    match fault.kind:
        case "http_500":
            return Response("Internal Server Error", status_code=500, media_type="text/plain")
        case "http_502" | "http_503":
            code = int(fault.kind[-3:])
            title = f"{code} {'Bad Gateway' if code == 502 else 'Service Temporarily Unavailable'}"
            page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
            return Response(page, status_code=code, media_type="text/html")
        case "html":
            page = "<!DOCTYPE html><html><body><h1>Scheduled maintenance</h1></body></html>"
            return Response(page, media_type="text/html")
        case "xml":
            doc = '<?xml version="1.0"?><Error><Code>ServiceUnavailable</Code></Error>'
            return Response(doc, media_type="application/xml")
        case "rate_limited":
            retry_after = _retry_after(fault.retry_after, fault.retry_after_format)
            return _courier_error(courier, 429, "Too Many Requests", {"Retry-After": retry_after})
        case "forbidden":
            return _firewall_block()
        case "token_expired":
            return _courier_error(courier, 401, "Token expired")
        case _:  # "empty"
            return Response(b"", media_type="application/json")


class CourierSimulator:
    """State and request handling of one simulator app; all of it runs on one event loop."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.clock = _Clock(settings.time_scale)
        self._rng = random.Random(settings.seed)
        self._latency = lognormal_params(settings.latency_mean_ms, settings.latency_p99_ms)
        self.shipments: dict[str, dict[str, _Shipment]] = {ns: {} for ns in _NAMESPACE.values()}
        # Drawn once per shipment (at registration) rather than on every answer: a courier
        # has its shipments' details stored, and the answers stay as cheap as its lookups.
        self._profiles: dict[tuple[str, str], _Profile] = {}
        # Each shipment's answer as last rendered, by (courier, key), with the step and clock
        # version it shows; rendered again only when the shipment has moved on.
        self._answers: dict[tuple[str, str], tuple[tuple[int, int], dict[str, Any]]] = {}
        self.faults: dict[tuple[str, str], deque[_Fault]] = defaultdict(deque)
        self.stats = {c: _Stats() for c in COURIERS}
        self.windows = {b: _RateWindow() for b in settings.rate_limits}
        self.sessions = _Sessions()

    def reset(self) -> None:
        """Forget shipments, faults, stats, rate windows and sessions; keep settings and clock."""
        for shipments in self.shipments.values():
            shipments.clear()
        self._profiles.clear()
        self._answers.clear()
        self.faults.clear()
        self.stats = {c: _Stats() for c in COURIERS}
        self.windows = {b: _RateWindow() for b in self.settings.rate_limits}
        self.sessions = _Sessions()

    def update_settings(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial settings change; `rate_limits` entries are merged field by field."""
        names = {f.name for f in fields(SimulatorSettings)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        merged = dict(changes)
        if "rate_limits" in changes:
            limits = dict(self.settings.rate_limits)
            for courier, patch in dict(changes["rate_limits"]).items():
                if courier not in limits:
                    raise ValueError(f"no rate limit for {courier!r}")
                limits[courier] = replace(limits[courier], **patch)
            merged["rate_limits"] = limits
        settings = replace(self.settings, **merged)
        if settings.seed != self.settings.seed:
            self._rng = random.Random(settings.seed)
            self._profiles.clear()
            self._answers.clear()
        self.clock.set_scale(settings.time_scale)
        self._latency = lognormal_params(settings.latency_mean_ms, settings.latency_p99_ms)
        self.settings = settings

    # -- shipments ------------------------------------------------------------------------

    def _parse_shipment(self, item: object, now: float) -> tuple[str, _Shipment]:
        if not isinstance(item, dict):
            raise ValueError("a shipment must be an object")
        missing = {"courier", "tracking_key", "order_id"} - set(item)
        if missing:
            raise ValueError(f"missing {sorted(missing)}")
        courier, scenario = item["courier"], item.get("scenario", "forward")
        if courier not in _NAMESPACE:
            raise ValueError(f"unknown courier {courier!r}")
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        booked_at = _parse_time(item["booked_at"]) if item.get("booked_at") else time.time()
        offset = item.get("offset_s", 0.0)
        if not isinstance(offset, int | float) or isinstance(offset, bool):
            raise ValueError("offset_s must be a number")
        order_id = str(item["order_id"])
        shipment = _Shipment(
            key=str(item["tracking_key"]),
            order_id=order_id,
            reference_no=str(item.get("reference_no") or order_id),
            scenario=scenario,
            booked_at=booked_at,
            origin=now - offset,
            path=SCENARIOS[scenario],
        )
        return _NAMESPACE[courier], shipment

    def register(self, items: Sequence[object]) -> int:
        """Add or replace shipments; all or none are stored."""
        now = self.clock.now()
        parsed = []
        for index, item in enumerate(items):
            try:
                parsed.append(self._parse_shipment(item, now))
            except (TypeError, ValueError) as exc:
                raise _BadRequest(f"shipment {index}: {exc}") from exc
        for namespace, shipment in parsed:
            self.shipments[namespace][shipment.key] = shipment
            self._profiles[namespace, shipment.key] = self._draw_profile(namespace, shipment)
            listed = _LISTED_BY_NAMESPACE.get(namespace)
            if listed is not None:  # rendered now, as a courier stores its tracking document
                self._answers.pop((listed, shipment.key), None)
                self._answer(listed, shipment.key)
        return len(parsed)

    def _profile(self, namespace: str, ship: _Shipment) -> _Profile:
        profile = self._profiles.get((namespace, ship.key))
        if profile is None:
            profile = self._profiles[namespace, ship.key] = self._draw_profile(namespace, ship)
        return profile

    def _draw_profile(self, namespace: str, ship: _Shipment) -> _Profile:
        # Only rng.random() (C code): this runs for every shipment registered.
        draw = random.Random(
            zlib.crc32(f"{self.settings.seed}|{namespace}|{ship.key}".encode())
        ).random

        attributes = (
            *_pick(draw, _ROUTES),
            _pick(draw, _CONSIGNEES),
            draw() < 0.4,
            300 + int(draw() * 7700),
            _pick(draw, _EOD_CODES),
            1 + int(draw() * 4),
            10**8 + int(draw() * 9 * 10**8),
        )
        starts, elapsed = [], 0.0
        for step in ship.path:  # drawn last, so a forced extra step keeps the earlier ones
            starts.append(elapsed)
            elapsed += _STEP_HOURS[step] * 3600 * (0.7 + 0.7 * draw())
        return _Profile(*attributes, starts=tuple(starts))

    def _position(self, ship: _Shipment, profile: _Profile) -> int:
        """Index of the shipment's current step; -1 before its life cycle starts."""
        if ship.pinned is not None:
            return ship.pinned
        return bisect.bisect_right(profile.starts, self.clock.now() - ship.origin) - 1

    def _lookup(
        self, courier: str, key: str
    ) -> tuple[_Shipment, _Profile, list[tuple[str, float]]] | None:
        """The shipment, its profile and its events so far (step, wall-clock epoch seconds), if
        the courier knows it yet."""
        namespace = _NAMESPACE[courier]
        ship = self.shipments[namespace].get(key)
        if ship is None:
            return None
        profile = self._profile(namespace, ship)
        position = self._position(ship, profile)
        if position < 0:
            return None
        wall = self.clock.wall
        events = [
            (ship.path[i], wall(ship.origin + profile.starts[i])) for i in range(position + 1)
        ]
        return ship, profile, events

    def force_step(self, courier: str, key: str, step: str, hold: bool) -> None:
        """Put a shipment at the start of `step` now; a step off its path is appended after the
        current one. Held shipments stay there; others carry on along the path."""
        if step not in STEPS:
            raise _BadRequest(f"unknown step {step!r}")
        namespace = _NAMESPACE[courier]
        ship = self.shipments[namespace][key]
        if step not in ship.path:
            current = max(self._position(ship, self._profile(namespace, ship)), 0)
            ship.path = ship.path[: current + 1] + (step,)
            self._profiles.pop((namespace, key), None)  # its step times cover the new path
        self._answers.pop((_LISTED_BY_NAMESPACE.get(namespace, ""), key), None)
        index = ship.path.index(step)
        # One simulated second into the step, so float rounding cannot put it a step early.
        ship.origin = self.clock.now() - self._profile(namespace, ship).starts[index] - 1.0
        ship.pinned = index if hold else None

    def describe(self, courier: str, key: str) -> dict[str, Any]:
        namespace = _NAMESPACE[courier]
        ship = self.shipments[namespace][key]
        found = self._lookup(courier, key)
        events = found[2] if found else []
        step = events[-1][0] if events else None
        return {
            "courier": courier,
            "tracking_key": ship.key,
            "order_id": ship.order_id,
            "reference_no": ship.reference_no,
            "scenario": ship.scenario,
            "booked_at": _utc_iso(ship.booked_at),
            "path": list(ship.path),
            "step": step,
            "pinned": ship.pinned is not None,
            "raw_status": _raw_status(courier, step) if step else None,
            "events": [{"step": s, "at": _utc_iso(at)} for s, at in events],
        }

    # -- request plumbing -----------------------------------------------------------------

    def endpoint(self, courier: str, endpoint: str, handler: Handler) -> Handler:
        """Wrap a courier handler with stats, latency, the rate limit and queued faults."""

        async def serve(request: Request) -> Response:
            stats = self.stats[courier]
            stats.requests += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                response = await self._serve(request, courier, endpoint, handler)
            finally:
                stats.in_flight -= 1
            stats.status_codes[response.status_code] += 1
            return response

        return serve

    async def _serve(
        self, request: Request, courier: str, endpoint: str, handler: Handler
    ) -> Response:
        if self._latency is not None:
            await asyncio.sleep(self._rng.lognormvariate(*self._latency) / 1000)
        bucket = _RATE_BUCKET[courier]
        limit = self.settings.rate_limits[bucket]
        ip = request.client.host if request.client else "unknown"
        count, frees_in = self.windows[bucket].record(ip, time.monotonic(), limit.window_s)
        if limit.enabled and count > limit.limit:
            if courier in _DELHIVERY_EXPRESS:
                return _firewall_block()
            retry_after = {"Retry-After": _retry_after(frees_in, "seconds")}
            return _courier_error(courier, 429, "Too Many Requests", retry_after)
        fault = self._take_fault(courier, endpoint)
        if fault is not None and fault.kind not in ("timeout", "truncated_json"):
            return _fault_response(courier, fault)
        try:
            response = await handler(request)
        except _BadRequest as exc:
            response = _error(400, str(exc))
        if fault is None:
            return response
        if fault.kind == "timeout":
            await asyncio.sleep(fault.seconds)
            return response
        body = bytes(response.body)
        return Response(body[: len(body) // 2], response.status_code, media_type="application/json")

    def _take_fault(self, courier: str, endpoint: str) -> _Fault | None:
        queue = self.faults.get((courier, endpoint))
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.popleft()
        return fault

    # -- Delhivery express (B2C and fallback) ------------------------------------------------

    def _answer(self, courier: str, key: str) -> dict[str, Any] | None:
        """The shipment's answer in `courier`'s list format, if the courier knows it yet."""
        found = self._lookup(courier, key)
        if found is None:
            return None
        ship, profile, events = found
        shown = (len(events) - 1, self.clock.version)
        cached = self._answers.get((courier, key))
        if cached is not None and cached[0] == shown:
            return cached[1]
        answer = _LIST_RENDERERS[courier](ship, profile, events)
        self._answers[courier, key] = (shown, answer)
        return answer

    def _render(self, courier: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Answers for the keys the courier knows, in request order; unknown keys are left out."""
        self.stats[courier].keys_requested += len(keys)
        answers = {}
        for key in keys:
            answer = self._answer(courier, key)
            if answer is not None:
                answers[key] = answer
        return answers

    def _delhivery_denied(self, request: Request, courier: str) -> Response | None:
        if request.headers.get("authorization") == f"Token {self.settings.delhivery_token}":
            return None
        return _courier_error(courier, 401, "Authentication credentials were not provided.")

    async def delhivery_b2c(self, request: Request) -> Response:
        if denied := self._delhivery_denied(request, "delhivery_b2c"):
            return denied
        waybill_list = request.query_params.get("waybill", "").split(",")
        waybills = [w.strip() for w in waybill_list if w.strip()]
        if len(waybills) > 50:
            raise _BadRequest("Maximum 50 waybills allowed per request")
        shipments = self._render("delhivery_b2c", waybills)
        if not shipments:
            return _delhivery_error("No such waybill or Order Id found")
        return JSONResponse({"ShipmentData": [{"Shipment": s} for s in shipments.values()]})

    async def delhivery_fallback(self, request: Request) -> Response:
        if denied := self._delhivery_denied(request, "delhivery_fallback"):
            return denied
        waybill = request.query_params.get("wbn", "").strip()
        self.stats["delhivery_fallback"].keys_requested += 1
        found = self._lookup("delhivery_fallback", waybill)
        if found is None:
            return _delhivery_error(f"Invalid AWB number: {waybill}")
        ship, profile, events = found
        step = events[-1][0]
        if time.time() - ship.booked_at >= 90 * _DAY:
            return _delhivery_error("Waybill is very old, tracking data is no longer available")
        ended_at = ship.origin + profile.starts[len(events) - 1]
        if step in END_STEPS and self.clock.now() - ended_at >= 7 * _DAY:
            return _delhivery_error("Shipment reached its end state 7 or more days ago")
        return JSONResponse({"ShipmentData": [{"Shipment": _delhivery_shipment(*found)}]})

    # -- Delhivery LTL (B2B) ----------------------------------------------------------------

    async def b2b_login(self, request: Request) -> Response:
        body = await _json_body(request)
        stats, settings, sessions = self.stats["delhivery_b2b"], self.settings, self.sessions
        stats.logins += 1
        username = str(body.get("username", "")) if isinstance(body, dict) else ""
        password = body.get("password") if isinstance(body, dict) else None
        locked_for = sessions.b2b_locked_until.get(username, 0.0) - time.monotonic()
        if locked_for > 0:
            stats.failed_logins += 1
            message = f"User is locked. Try again after {math.ceil(locked_for / 60)} minutes."
            return _courier_error("delhivery_b2b", 401, message)
        if username != settings.b2b_username or password != settings.b2b_password:
            stats.failed_logins += 1
            sessions.b2b_locked_until[username] = time.monotonic() + settings.b2b_lockout_s
            return _courier_error("delhivery_b2b", 401, "Invalid username or password")
        token = _jwt(username)
        sessions.b2b_tokens[token] = time.time() + settings.b2b_token_ttl_s
        return JSONResponse({"success": True, "data": {"jwt": token}})

    async def b2b_track(self, request: Request) -> Response:
        if self.sessions.b2b_tokens.get(_bearer(request), 0.0) <= time.time():
            return _courier_error("delhivery_b2b", 401, "Token expired")
        lrnum = request.query_params.get("lrnum", "").strip()
        self.stats["delhivery_b2b"].keys_requested += 1
        found = self._lookup("delhivery_b2b", lrnum)
        request_id = str(uuid.uuid4())
        if found is None:
            status = 200 if self._rng.random() < self.settings.b2b_not_found_http_200_share else 404
            body = {"success": False, "error": {"code": 404, "message": "Data not found."}}
            return JSONResponse(body, status_code=status)
        ship, profile, events = found
        step, at = events[-1]
        if step == "cancelled":
            text = f"For LR {ship.key}, Shipment has been cancelled by the client."
            return JSONResponse({"success": True, "request_id": request_id, "data": text})
        status_text, remark = _B2B[step]
        wbn = {
            "status": status_text,
            "location": profile.place(step).hub,
            "scan_remark": remark,
            "scan_timestamp": _delhivery_time(at, ms=False),
            "manifested_date": _delhivery_time(events[0][1], ms=False),
        }
        wbns = [{"wbn": f"81{profile.number}{i:02d}", **wbn} for i in range(profile.pieces)]
        data = {"lrnum": ship.key, "status": status_text, "mcount": profile.pieces, "wbns": wbns}
        return JSONResponse({"success": True, "request_id": request_id, "data": data})

    # -- Shiprocket -------------------------------------------------------------------------

    async def shiprocket_login(self, request: Request) -> Response:
        body = await _json_body(request)
        stats, settings = self.stats["shiprocket"], self.settings
        stats.logins += 1
        credentials = (settings.shiprocket_email, settings.shiprocket_password)
        if not isinstance(body, dict) or (body.get("email"), body.get("password")) != credentials:
            stats.failed_logins += 1
            return _courier_error("shiprocket", 401, "Invalid email and password combination")
        token = _jwt(settings.shiprocket_email)
        now = time.time()
        self.sessions.shiprocket_tokens[token] = now + settings.shiprocket_token_ttl_s
        return JSONResponse(
            {
                "id": 1001,
                "first_name": "Demo",
                "last_name": "Seller",
                "email": settings.shiprocket_email,
                "company_id": 42,
                "created_at": _plain_time(now),
                "token": token,
            }
        )

    async def shiprocket_track(self, request: Request) -> Response:
        expiry = self.sessions.shiprocket_tokens.get(_bearer(request))
        if expiry is None:
            return _courier_error("shiprocket", 401, "Unauthenticated.")
        if expiry <= time.time():
            return _courier_error("shiprocket", 401, "Token has expired")
        awbs = await _awbs(request, 50)
        return JSONResponse(self._render("shiprocket", awbs))

    # -- Velocity ---------------------------------------------------------------------------

    async def velocity_login(self, request: Request) -> Response:
        body = await _json_body(request)
        stats, settings, sessions = self.stats["velocity"], self.settings, self.sessions
        stats.logins += 1
        if sessions.velocity_locked_until > time.monotonic():
            stats.failed_logins += 1
            return _courier_error("velocity", 401, "Account locked after too many failed logins")
        credentials = (settings.velocity_username, settings.velocity_password)
        if (
            not isinstance(body, dict)
            or (body.get("username"), body.get("password")) != credentials
        ):
            stats.failed_logins += 1
            sessions.velocity_failures += 1
            if sessions.velocity_failures >= settings.velocity_max_failed_logins:
                sessions.velocity_locked_until = time.monotonic() + settings.velocity_lockout_s
                sessions.velocity_failures = 0
            return _courier_error("velocity", 401, "Invalid username or password")
        sessions.velocity_failures = 0
        sessions.velocity_token = secrets.token_hex(24)
        sessions.velocity_expiry = time.time() + settings.velocity_token_ttl_s
        expires_at = datetime.fromtimestamp(sessions.velocity_expiry, _IST).isoformat()
        return JSONResponse({"token": sessions.velocity_token, "expires_at": expires_at})

    async def velocity_track(self, request: Request) -> Response:
        sessions = self.sessions
        token = request.headers.get("authorization", "")
        if not token or token != sessions.velocity_token or sessions.velocity_expiry <= time.time():
            return _courier_error("velocity", 401, "Invalid or expired token")
        awbs = await _awbs(request, 45)
        return JSONResponse({"result": self._render("velocity", awbs)})

    # -- admin API --------------------------------------------------------------------------

    async def admin_register(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, list):
            raise _BadRequest("expected a list of shipments")
        registered = self.register(body)
        total = sum(len(s) for s in self.shipments.values())
        return JSONResponse({"registered": registered, "total": total})

    async def admin_shipment(self, request: Request) -> Response:
        courier, key = request.path_params["courier"], request.path_params["key"]
        if courier not in _NAMESPACE:
            raise _BadRequest(f"unknown courier {courier!r}")
        if key not in self.shipments[_NAMESPACE[courier]]:
            return _error(404, f"no {courier} shipment {key!r}")
        if request.method == "POST":
            body = await _json_body(request)
            if not isinstance(body, dict) or "step" not in body:
                raise _BadRequest('expected {"step": name}')
            self.force_step(courier, key, str(body["step"]), bool(body.get("hold", True)))
        return JSONResponse(self.describe(courier, key))

    async def admin_faults(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest("expected an object")
        courier, kind, endpoint = (
            body.get("courier"),
            body.get("kind"),
            body.get("endpoint", "track"),
        )
        if courier not in COURIERS or kind not in FAULT_KINDS:
            raise _BadRequest(f"courier must be one of {COURIERS}, kind one of {FAULT_KINDS}")
        if endpoint not in ("track", "login") or (
            endpoint == "login" and courier in _DELHIVERY_EXPRESS
        ):
            raise _BadRequest(f"{courier} has no {endpoint!r} endpoint")
        fmt = body.get("retry_after_format", "seconds")
        if fmt not in ("seconds", "unix", "http_date"):
            raise _BadRequest("retry_after_format must be seconds, unix or http_date")
        fault = _Fault(
            kind=kind,
            remaining=int(_number(body, "count", 1)),
            seconds=_number(body, "seconds", 35.0),
            retry_after=_number(body, "retry_after", 60.0),
            retry_after_format=fmt,
        )
        self.faults[(courier, endpoint)].append(fault)
        return JSONResponse({"queued": asdict(fault), "courier": courier, "endpoint": endpoint})

    async def admin_stats(self, request: Request) -> Response:
        couriers = {}
        for courier, stats in self.stats.items():
            couriers[courier] = {
                "requests": stats.requests,
                "logins": stats.logins,
                "failed_logins": stats.failed_logins,
                "keys_requested": stats.keys_requested,
                "max_in_flight": stats.max_in_flight,
                "status_codes": {str(code): n for code, n in sorted(stats.status_codes.items())},
                "max_window_requests": self.windows[_RATE_BUCKET[courier]].max_seen,
            }
        shipments = {namespace: len(s) for namespace, s in self.shipments.items()}
        return JSONResponse({"couriers": couriers, "shipments": shipments})

    async def admin_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"reset": True})

    async def admin_settings(self, request: Request) -> Response:
        if request.method == "POST":
            body = await _json_body(request)
            if not isinstance(body, dict):
                raise _BadRequest("expected an object")
            try:
                self.update_settings(body)
            except (TypeError, ValueError) as exc:
                raise _BadRequest(str(exc)) from exc
        return JSONResponse(asdict(self.settings))

    async def admin_clock(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest("expected an object")
        advance_s = _number(body, "advance_s", 0.0)
        if advance_s < 0:
            raise _BadRequest("advance_s must not be negative")
        self.clock.advance(advance_s)
        return JSONResponse({"now": _utc_iso(time.time())})

    async def admin_health(self, request: Request) -> Response:
        total = sum(len(s) for s in self.shipments.values())
        return JSONResponse({"status": "ok", "now": _utc_iso(time.time()), "shipments": total})


def _number(body: Mapping[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _BadRequest(f"{name} must be a number")
    return float(value)


def _admin(handler: Handler) -> Handler:
    """Answer an admin handler's bad requests with 400."""

    async def serve(request: Request) -> Response:
        try:
            return await handler(request)
        except _BadRequest as exc:
            return _error(400, str(exc))

    return serve


def _jwt(subject: str) -> str:
    """A random token shaped like a JWT (header.payload.signature)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = part(json.dumps({"sub": subject, "jti": secrets.token_hex(8)}).encode())
    return f"{header}.{payload}.{part(secrets.token_bytes(32))}"


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""


async def _awbs(request: Request, most: int) -> list[str]:
    body = await _json_body(request)
    awbs = body.get("awbs") if isinstance(body, dict) else None
    if not isinstance(awbs, list):
        raise _BadRequest('expected {"awbs": [...]}')
    if len(awbs) > most:
        raise _BadRequest(f"The awbs may not have more than {most} items.")
    return [str(a) for a in awbs]


def _raw_status(courier: str, step: str) -> str:
    """The status string the courier's answer carries for a step."""
    if _NAMESPACE[courier] == "delhivery":
        status_type, status, _, _ = _DELHIVERY[step]
        return f"{status_type}/{status}"
    if courier == "delhivery_b2b":
        return "cancelled" if step == "cancelled" else _B2B[step][0]
    if courier == "shiprocket":
        return "track_status 0" if step == "no_scans" else _SHIPROCKET[step][0]
    return _VELOCITY[step][0]


def _delhivery_error(message: str) -> JSONResponse:
    rmk = (
        "Some error has occurred. Please contact client.support@delhivery.com "
        f"with error message- {message}"
    )
    return JSONResponse({"rmk": rmk, "Success": False, "Error": message})


def _delhivery_shipment(
    ship: _Shipment, profile: _Profile, events: list[tuple[str, float]]
) -> dict[str, Any]:
    scans = []
    for step, at in events:
        scan_type, scan, code, instructions = _DELHIVERY[step]
        if step == "failed_attempt":
            code, instructions = profile.eod
        stamp = _delhivery_time(at)
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
    first = _first_times(events)
    picked = first.get("picked_up")
    promised = f"{_delhivery_time(events[0][1] + 5 * _DAY, ms=False)[:10]}T23:59:59"
    destination = profile.destination
    return {
        "AWB": ship.key,
        "ReferenceNo": ship.reference_no,
        "OrderType": "COD" if profile.cod else "Pre-paid",
        "Origin": profile.origin.hub,
        "Destination": destination.city,
        "PickupLocation": "ORDERTRACK",
        "PickUpDate": _delhivery_time(picked if picked is not None else events[0][1], ms=False),
        "PickedupDate": _delhivery_time(picked, ms=False),
        "OriginRecieveDate": _delhivery_time(first.get("in_transit")),
        "DestRecieveDate": _delhivery_time(first.get("reached_destination")),
        "FirstAttemptDate": _delhivery_time(first.get("out_for_delivery")),
        "DeliveryDate": _delhivery_time(first.get("delivered")),
        "RTOStartedDate": _delhivery_time(first.get("rto_initiated")),
        "ReturnedDate": _delhivery_time(first.get("rto_delivered")),
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


def _shiprocket_tracking(
    ship: _Shipment, profile: _Profile, events: list[tuple[str, float]]
) -> dict[str, Any]:
    if events[-1][0] == "no_scans":
        return {"tracking_data": {"track_status": 0, "error": _SHIPROCKET_NO_ACTIVITY}}
    activities = []
    for step, at in reversed(events):
        _, _, carrier_code, activity, sr_status, label = _SHIPROCKET[step]
        place = profile.place(step)
        activities.append(
            {
                "date": _plain_time(at),
                "status": carrier_code,
                "activity": activity,
                "location": f"{place.city.upper()}, {place.city}, {place.state.upper()}",
                "sr-status": sr_status,
                "sr-status-label": label,
            }
        )
    first = _first_times(events)
    current_status, code = _SHIPROCKET[events[-1][0]][:2]
    delivered = first.get("delivered")
    track = {
        "id": profile.number,
        "awb_code": ship.key,
        "courier_company_id": 51,
        "shipment_id": profile.number,
        "order_id": profile.number + 1,
        "pickup_date": _plain_time(first.get("picked_up")),
        "delivered_date": _plain_time(delivered),
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
            "etd": _plain_time(events[0][1] + 5 * _DAY),
            "qc_response": {"qc_image": "", "qc_failed_reason": ""},
        }
    }


def _velocity_tracking(
    ship: _Shipment, profile: _Profile, events: list[tuple[str, float]]
) -> dict[str, Any]:
    activities = [
        {
            "date": _plain_time(at),
            "activity": _VELOCITY[step][1],
            "location": profile.place(step).city,
        }
        for step, at in reversed(events)
    ]
    status = _VELOCITY[events[-1][0]][0]
    first = _first_times(events)
    delivered = first.get("delivered")
    track = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{profile.number}")),
        "awb_code": ship.key,
        "courier_company_id": "CARKX7WW6UNS8",
        "shipment_id": f"SHI{profile.number:X}",
        "order_id": f"ORD{profile.number + 1:X}",
        "pickup_date": _plain_time(first.get("picked_up")),
        "delivered_date": _plain_time(delivered),
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


#: The couriers asked for lists of keys, and how each renders one shipment's answer.
_LIST_RENDERERS: dict[str, Callable[[_Shipment, _Profile, list[tuple[str, float]]], dict]] = {
    "delhivery_b2c": _delhivery_shipment,
    "shiprocket": _shiprocket_tracking,
    "velocity": _velocity_tracking,
}
_LISTED_BY_NAMESPACE = {_NAMESPACE[courier]: courier for courier in _LIST_RENDERERS}


def create_app(settings: SimulatorSettings | None = None) -> Starlette:
    """The simulator as one ASGI app serving every courier under its own path prefix."""
    sim = CourierSimulator(settings or SimulatorSettings())
    courier = sim.endpoint
    routes = [
        Route(
            "/delhivery/api/v1/packages/json/",
            courier("delhivery_b2c", "track", sim.delhivery_b2c),
            methods=["GET"],
        ),
        Route(
            "/delhivery-fallback/api/v1/packages/json/",
            courier("delhivery_fallback", "track", sim.delhivery_fallback),
            methods=["GET"],
        ),
        Route(
            "/delhivery-b2b/ums/login",
            courier("delhivery_b2b", "login", sim.b2b_login),
            methods=["POST"],
        ),
        Route(
            "/delhivery-b2b/lrn/track",
            courier("delhivery_b2b", "track", sim.b2b_track),
            methods=["GET"],
        ),
        Route(
            "/shiprocket/v1/external/auth/login",
            courier("shiprocket", "login", sim.shiprocket_login),
            methods=["POST"],
        ),
        Route(
            "/shiprocket/v1/external/courier/track/awbs",
            courier("shiprocket", "track", sim.shiprocket_track),
            methods=["POST"],
        ),
        Route(
            "/velocity/custom/api/v1/auth-token",
            courier("velocity", "login", sim.velocity_login),
            methods=["POST"],
        ),
        Route(
            "/velocity/custom/api/v1/order-tracking",
            courier("velocity", "track", sim.velocity_track),
            methods=["POST"],
        ),
        Route("/_admin/shipments", _admin(sim.admin_register), methods=["POST"]),
        Route(
            "/_admin/shipments/{courier}/{key}",
            _admin(sim.admin_shipment),
            methods=["GET"],
        ),
        Route(
            "/_admin/shipments/{courier}/{key}/step",
            _admin(sim.admin_shipment),
            methods=["POST"],
        ),
        Route("/_admin/faults", _admin(sim.admin_faults), methods=["POST"]),
        Route("/_admin/stats", _admin(sim.admin_stats), methods=["GET"]),
        Route("/_admin/reset", _admin(sim.admin_reset), methods=["POST"]),
        Route("/_admin/settings", _admin(sim.admin_settings), methods=["GET", "POST"]),
        Route("/_admin/clock", _admin(sim.admin_clock), methods=["POST"]),
        Route("/_admin/health", _admin(sim.admin_health), methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.simulator = sim
    return app


def _encode_time(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


class SimulatorAdmin:
    """Synchronous client of the admin API, for tests, the demo seeder and the benchmark."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        self._http = httpx.Client(base_url=f"{base_url.rstrip('/')}/_admin", timeout=timeout)

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


@contextmanager
def running_simulator(
    settings: SimulatorSettings | None = None, host: str = "127.0.0.1"
) -> Iterator[str]:
    """Serve a simulator from a background thread on a free port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    config = uvicorn.Config(
        create_app(settings), log_level="warning", access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the simulator failed to start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: serve the simulator with uvicorn."""
    defaults = SimulatorSettings()
    parser = argparse.ArgumentParser(description="Courier API simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency-mean-ms", type=float, default=defaults.latency_mean_ms)
    parser.add_argument("--latency-p99-ms", type=float, default=defaults.latency_p99_ms)
    parser.add_argument(
        "--time-scale",
        type=float,
        default=defaults.time_scale,
        help="how much faster than real shipments move (0 holds them at their steps)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--no-rate-limits", action="store_true", help="count requests but never refuse them"
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    limits = {
        name: replace(limit, enabled=not args.no_rate_limits)
        for name, limit in defaults.rate_limits.items()
    }
    settings = replace(
        defaults,
        latency_mean_ms=args.latency_mean_ms,
        latency_p99_ms=args.latency_p99_ms,
        time_scale=args.time_scale,
        seed=args.seed,
        rate_limits=limits,
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
