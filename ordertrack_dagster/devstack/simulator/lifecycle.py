"""Shipment life cycles: the scripted steps of each scenario, the clock they run on, and the
store of registered shipments with their per-shipment details. Courier modules render these
steps in their own wire formats; nothing here knows any courier's format."""

from __future__ import annotations

import bisect
import itertools
import random
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Required, TypedDict, TypeVar

#: The line haul every delivery attempt follows, up to the courier's first attempt.
_TO_THE_DOOR = ("manifested", "picked_up", "in_transit", "reached_destination", "out_for_delivery")

SCENARIOS: Mapping[str, tuple[str, ...]] = {
    "forward": (*_TO_THE_DOOR, "delivered"),
    "failed_attempt": (*_TO_THE_DOOR, "failed_attempt", "out_for_delivery", "delivered"),
    "rto": (
        *_TO_THE_DOOR,
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

DAY = 86400.0
DEFAULT_TIME_SCALE = 3600.0


@dataclass(frozen=True, slots=True)
class Place:
    hub: str
    city: str
    state: str
    pincode: int


_PLACES = (
    Place("Amritsar_VerkaBypss_I (Punjab)", "Amritsar", "Punjab", 143001),
    Place("Delhi_DLEIndustrialArea_D (Delhi)", "Delhi", "Delhi", 110015),
    Place("Bhiwandi_Mankoli_HB (Maharashtra)", "Bhiwandi", "Maharashtra", 421302),
    Place("Pune_Kharadi_D (Maharashtra)", "Pune", "Maharashtra", 411014),
    Place("Jaipur_Hub (Rajasthan)", "Jaipur", "Rajasthan", 302001),
    Place("Bengaluru_Bomsndra_HB (Karnataka)", "Bengaluru", "Karnataka", 560099),
    Place("Hyderabad_Shamshabad_HB (Telangana)", "Hyderabad", "Telangana", 500108),
    Place("Kolkata_Dankuni_HB (West Bengal)", "Kolkata", "West Bengal", 712311),
    Place("Chennai_Poonamallee_HB (Tamil Nadu)", "Chennai", "Tamil Nadu", 600056),
    Place("Ahmedabad_Changodar_HB (Gujarat)", "Ahmedabad", "Gujarat", 382213),
)
_ROUTES = tuple(itertools.permutations(_PLACES, 3))  # (origin, destination, transit hub)
_CONSIGNEES = ("R. Sharma", "Priya Nair", "Amit Verma", "Sneha Reddy", "Karan Mehta", "Anjali Das")


class ShipmentSpec(TypedDict, total=False):
    """One shipment for ``POST /_admin/shipments``."""

    courier: Required[str]  # a simulated API's name (`courier_apis()`), or one of its aliases
    tracking_key: Required[str]  # AWB, or LR number for delhivery_b2b
    order_id: Required[str]
    booked_at: str | datetime  # ISO time, zone-less means UTC; default now; reported only
    scenario: str  # a SCENARIOS key; default "forward"
    # Simulated seconds of the life cycle already run at registration; default 0 (first step);
    # negative: the courier learns of the shipment that much later.
    offset_s: float
    reference_no: str  # Delhivery ReferenceNo, when it must differ from order_id (reused waybill)


class Clock:
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
        self._pace = scale or DEFAULT_TIME_SCALE
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
class Shipment:
    key: str
    order_id: str
    reference_no: str
    scenario: str
    booked_at: float  # wall-clock epoch seconds; reported, never moves the life cycle
    origin: float  # life-cycle time its first step starts: registration - offset, or forced
    path: tuple[str, ...]
    pinned: int | None = None  # index of a forced step the shipment is held at


@dataclass(frozen=True, slots=True)
class Profile:
    """Per-shipment details drawn from a seeded generator, so every answer agrees."""

    origin: Place
    destination: Place
    hub: Place
    consignee: str
    cod: bool
    amount: int
    attempt_draw: float  # in [0, 1): picks a courier's reason for a failed delivery attempt
    pieces: int
    number: int
    starts: tuple[float, ...]  # offset of each path step from the life-cycle origin

    def place(self, step: str) -> Place:
        return getattr(self, _STEP_PLACE[step])


Events = list[tuple[str, float]]
"""A shipment's steps so far, each with its wall-clock epoch seconds."""

Found = tuple[Shipment, Profile, Events]


def first_times(events: Events) -> dict[str, float]:
    """When each step was first reached."""
    first: dict[str, float] = {}
    for step, at in events:
        first.setdefault(step, at)
    return first


def _parse_time(value: object) -> float:
    """Epoch seconds of an ISO timestamp; zone-less means UTC."""
    if not isinstance(value, str):
        raise ValueError("timestamps must be ISO strings")
    parsed = datetime.fromisoformat(value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


_T = TypeVar("_T")


def _pick(draw: Callable[[], float], options: Sequence[_T]) -> _T:
    return options[int(draw() * len(options))]


class Shipments:
    """Registered shipments by waybill space, with their profiles; where each one is now."""

    def __init__(self, clock: Clock, seed: int, namespaces: Mapping[str, str]) -> None:
        self.clock = clock
        self.seed = seed
        self.namespaces = namespaces  # courier name (or alias) -> its waybill space
        self.by_namespace: dict[str, dict[str, Shipment]] = {ns: {} for ns in namespaces.values()}
        # Drawn once per shipment (at registration) rather than on every answer: a courier
        # has its shipments' details stored, and the answers stay as cheap as its lookups.
        self._profiles: dict[tuple[str, str], Profile] = {}

    def total(self) -> int:
        return sum(len(s) for s in self.by_namespace.values())

    def clear(self) -> None:
        for shipments in self.by_namespace.values():
            shipments.clear()
        self._profiles.clear()

    def reseed(self, seed: int) -> None:
        """Draw every profile again, from `seed`."""
        self.seed = seed
        self._profiles.clear()

    def parse(self, item: object, now: float) -> tuple[str, Shipment]:
        """A `ShipmentSpec` as its waybill space and shipment; ValueError when malformed."""
        if not isinstance(item, dict):
            raise ValueError("a shipment must be an object")
        missing = {"courier", "tracking_key", "order_id"} - set(item)
        if missing:
            raise ValueError(f"missing {sorted(missing)}")
        courier, scenario = item["courier"], item.get("scenario", "forward")
        if courier not in self.namespaces:
            raise ValueError(f"unknown courier {courier!r}")
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        booked_at = _parse_time(item["booked_at"]) if item.get("booked_at") else time.time()
        offset = item.get("offset_s", 0.0)
        if not isinstance(offset, int | float) or isinstance(offset, bool):
            raise ValueError("offset_s must be a number")
        order_id = str(item["order_id"])
        shipment = Shipment(
            key=str(item["tracking_key"]),
            order_id=order_id,
            reference_no=str(item.get("reference_no") or order_id),
            scenario=scenario,
            booked_at=booked_at,
            origin=now - offset,
            path=SCENARIOS[scenario],
        )
        return self.namespaces[courier], shipment

    def add(self, namespace: str, shipment: Shipment) -> None:
        """Store (or replace) a shipment and draw its profile."""
        self.by_namespace[namespace][shipment.key] = shipment
        self._profiles[namespace, shipment.key] = self._draw_profile(namespace, shipment)

    def knows(self, courier: str, key: str) -> bool:
        return key in self.by_namespace[self.namespaces[courier]]

    def get(self, courier: str, key: str) -> Shipment:
        return self.by_namespace[self.namespaces[courier]][key]

    def _profile(self, namespace: str, ship: Shipment) -> Profile:
        profile = self._profiles.get((namespace, ship.key))
        if profile is None:
            profile = self._profiles[namespace, ship.key] = self._draw_profile(namespace, ship)
        return profile

    def _draw_profile(self, namespace: str, ship: Shipment) -> Profile:
        # Only rng.random() (C code): this runs for every shipment registered.
        draw = random.Random(zlib.crc32(f"{self.seed}|{namespace}|{ship.key}".encode())).random

        attributes = (
            *_pick(draw, _ROUTES),
            _pick(draw, _CONSIGNEES),
            draw() < 0.4,
            300 + int(draw() * 7700),
            draw(),
            1 + int(draw() * 4),
            10**8 + int(draw() * 9 * 10**8),
        )
        starts, elapsed = [], 0.0
        for step in ship.path:  # drawn last, so a forced extra step keeps the earlier ones
            starts.append(elapsed)
            elapsed += _STEP_HOURS[step] * 3600 * (0.7 + 0.7 * draw())
        return Profile(*attributes, starts=tuple(starts))

    def _position(self, ship: Shipment, profile: Profile) -> int:
        """Index of the shipment's current step; -1 before its life cycle starts."""
        if ship.pinned is not None:
            return ship.pinned
        return bisect.bisect_right(profile.starts, self.clock.now() - ship.origin) - 1

    def timeline(self, courier: str, key: str) -> list[tuple[str, float]]:
        """Every step of the shipment's path with the life-cycle time it starts at, past and
        future: the benchmark's freshness model reads the same life cycle the answers show."""
        namespace = self.namespaces[courier]
        ship = self.by_namespace[namespace][key]
        starts = self._profile(namespace, ship).starts
        return [(step, ship.origin + start) for step, start in zip(ship.path, starts, strict=True)]

    def forget(self, courier: str, key: str) -> None:
        """Drop a shipment and its profile (a model that reads only its timeline)."""
        namespace = self.namespaces[courier]
        self.by_namespace[namespace].pop(key, None)
        self._profiles.pop((namespace, key), None)

    def lookup(self, courier: str, key: str) -> Found | None:
        """The shipment, its profile and its events so far, if the courier knows it yet."""
        namespace = self.namespaces[courier]
        ship = self.by_namespace[namespace].get(key)
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
        namespace = self.namespaces[courier]
        ship = self.by_namespace[namespace][key]
        if step not in ship.path:
            current = max(self._position(ship, self._profile(namespace, ship)), 0)
            ship.path = ship.path[: current + 1] + (step,)
            self._profiles.pop((namespace, key), None)  # its step times cover the new path
        index = ship.path.index(step)
        # One simulated second into the step, so float rounding cannot put it a step early.
        ship.origin = self.clock.now() - self._profile(namespace, ship).starts[index] - 1.0
        ship.pinned = index if hold else None
