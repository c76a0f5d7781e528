"""What a simulator module exports: one `CourierSim`, from which the simulator's registries
are derived (`registry.py`: the live quotas, the per-courier settings sections, the routes,
the environment that points the product at it) and the demo's orders of its flows
(`devstack/seed.py`), so a courier's simulator is added or changed in its own module
(docs/architecture.md, "Adding a courier")."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ordertrack_dagster.devstack.simulator.base import CourierApi
from ordertrack_dagster.devstack.simulator.ratelimit import RateLimit


def digits(rng: random.Random, length: int) -> str:
    """A random number of exactly `length` digits."""
    return str(rng.randrange(10 ** (length - 1), 10**length))


@dataclass(frozen=True)
class DemoOrders:
    """How the demo's orders of one flow look (the seed writes them; their sales channels
    follow the flow's selection)."""

    share: float  # of the demo's orders (roughly production's mix)
    booking_couriers: tuple[str, ...]  # the free-text `bookingCourier` values it meets
    waybill: Callable[[random.Random], str]  # an `awb_number` in the courier's style
    # the `courier_status` an order polled before holds, for its canonical status
    courier_status: Callable[[str], str]
    lr_number: Callable[[random.Random], str] | None = None  # tracked by LR number instead
    value_range: tuple[float, float] = (199.0, 4_999.0)
    most: int | None = None  # at most this many in a demo (a paced flow keeps a run short)
    reused_references: bool = False  # some rebooked orders and reused waybills (Delhivery)


@dataclass(frozen=True)
class CourierSim:
    """One simulated courier: the APIs it serves (routes, answers, error and over-quota
    answers, the product's environment for each), the live quota they share, the defaults of
    its own settings (a frozen dataclass: credentials, token lifetimes, lock-outs), which the
    admin API changes at run time, and the demo's orders of the flows it serves, by flow key
    (a flow's key is the name of the API that serves it)."""

    apis: tuple[type[CourierApi], ...]
    rate_limit: RateLimit
    settings: Any
    orders: Mapping[str, DemoOrders]

    def __post_init__(self) -> None:
        if not self.apis:
            raise ValueError("a simulated courier serves at least one API")
        if unknown := set(self.orders) - {api.name for api in self.apis}:
            raise ValueError(f"demo orders of flows no API of it serves: {sorted(unknown)}")

    @property
    def name(self) -> str:
        """Its first API's name: the key of its quota (`rate_limits`) and of its settings
        section (`couriers`), in the admin API and its client."""
        return self.apis[0].name
