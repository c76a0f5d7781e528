"""Every simulated courier, found as the modules of this package that export a `SIMULATOR`,
and the registries derived from them, so that no shared module names a courier.

They are found when first asked for, not at import: the shared modules import this one, and
the courier modules import the shared ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path
from typing import Any

from ordertrack_dagster.devstack.simulator.base import CourierApi
from ordertrack_dagster.devstack.simulator.description import CourierSim, DemoOrders
from ordertrack_dagster.devstack.simulator.ratelimit import RateLimit

_PACKAGE = __name__.rpartition(".")[0]


@cache
def simulators() -> tuple[CourierSim, ...]:
    """Each module's `SIMULATOR`, in module name order."""
    found = []
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name.startswith("_"):  # `__main__` would serve the simulator
            continue
        simulator = getattr(importlib.import_module(f"{_PACKAGE}.{module.name}"), "SIMULATOR", None)
        if isinstance(simulator, CourierSim):
            found.append(simulator)
    names = [api.name for simulator in found for api in simulator.apis]
    if len(names) != len(set(names)):
        raise ValueError(f"two simulated courier APIs share a name: {sorted(names)}")
    return tuple(found)


def courier_apis() -> tuple[type[CourierApi], ...]:
    """Every simulated API; their names are the couriers of the admin API, faults and stats."""
    return tuple(api for simulator in simulators() for api in simulator.apis)


def default_rate_limits() -> dict[str, RateLimit]:
    """The live quotas, by simulated courier: its APIs share one."""
    return {simulator.name: simulator.rate_limit for simulator in simulators()}


def default_courier_settings() -> dict[str, Any]:
    """Each simulated courier's own settings (credentials, token lifetimes), by its name."""
    return {simulator.name: simulator.settings for simulator in simulators()}


def demo_orders() -> dict[str, DemoOrders]:
    """How the demo's orders of each flow look, by flow key."""
    return {flow: orders for simulator in simulators() for flow, orders in simulator.orders.items()}
