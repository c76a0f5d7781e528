"""The simulator's registries are derived from its courier modules, and no shared module
names a courier: adding one is writing its module (docs/architecture.md, "Adding a
courier")."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from ordertrack_dagster.devstack import simulator as package
from ordertrack_dagster.devstack.simulator import (
    CourierSim,
    SimulatorSettings,
    courier_apis,
    create_app,
    demo_orders,
    simulator_env,
    simulators,
)
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster_tests.helpers import docstring_ids

MODULES = {
    path.stem: path for path in Path(package.__file__).parent.glob("*.py") if path.stem[0] != "_"
}


def _courier_modules() -> set[str]:
    """The modules that export a `SIMULATOR`."""
    return {
        name
        for name in MODULES
        if isinstance(
            getattr(importlib.import_module(f"{package.__name__}.{name}"), "SIMULATOR", None),
            CourierSim,
        )
    }


def _courier_names() -> set[str]:
    """Every name a courier is known by: its APIs' names, aliases and waybill spaces."""
    return {name for api in courier_apis() for name in (api.name, api.namespace, *api.aliases)}


def naming_a_courier(source: str, names: set[str], courier_modules: set[str]) -> list[str]:
    """Where a module's code names a courier: a string (docstrings aside) holding one of
    `names`, or an import of a courier module."""
    tree = ast.parse(source)
    docstrings = docstring_ids(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings and any(name in node.value for name in names):
                found.append(f"{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = {node.module.rpartition(".")[2], *(alias.name for alias in node.names)}
            found += [f"{node.lineno}: import {m}" for m in sorted(modules & courier_modules)]
    return found


def test_the_registries_are_derived_from_every_courier_module() -> None:
    found = {simulator.name for simulator in simulators()}
    assert {"delhivery_b2c", "delhivery_b2b", "shiprocket", "velocity"} <= found
    assert len(_courier_modules()) == len(simulators())
    defaults = SimulatorSettings()
    app = create_app()
    served = {route.path for route in app.routes}  # type: ignore[attr-defined]
    apis = app.state.simulator.couriers
    env = simulator_env("http://simulator")
    for simulator in simulators():
        assert defaults.rate_limits[simulator.name] == simulator.rate_limit
        assert defaults.couriers[simulator.name] == simulator.settings
        for api in simulator.apis:
            assert {path for path, *_ in apis[api.name].routes()} <= served
            assert api.env("http://simulator", simulator.settings).items() <= env.items()
    assert set(defaults.rate_limits) == set(defaults.couriers) == found
    assert set(demo_orders()) == set(FLOWS)  # the seed writes every flow's orders
    assert list(apis) == [api.name for api in courier_apis()]


def test_no_shared_module_names_a_courier() -> None:
    courier_modules, names = _courier_modules(), _courier_names()
    shared = set(MODULES) - courier_modules
    assert {"core", "admin", "app", "settings", "ratelimit", "registry"} <= shared
    named = {
        module: places
        for module in sorted(shared)
        if (places := naming_a_courier(MODULES[module].read_text(), names, courier_modules))
    }
    assert named == {}


def test_the_check_sees_a_courier_named_in_code_but_not_in_a_docstring() -> None:
    source = (
        '"""Serves velocity."""\n'
        "from ordertrack_dagster.devstack.simulator import velocity\n"
        'LIMITS = {"velocity": 3}\n'
    )
    assert naming_a_courier(source, {"velocity"}, {"velocity"}) == [
        "2: import velocity",
        "3: 'velocity'",
    ]
