"""One module per courier API, each exporting its `DESCRIPTION`; the registries of the
couriers (`DESCRIPTIONS`, the modules of this package that export one, and `COURIERS`
binding each flow to its resource and reader) are derived from those descriptions, as are
the settings map and the settings' checks and redaction (`ordertrack_dagster.settings`).

What other concerns need of the couriers is imported from here: running a fetch, judging a
stored pause, reading Retry-After and stored answer text. Every other module of this package
is internal to it; what the couriers store (pauses, budget windows, tokens, login blocks) is
kept through the shared store, `resources/state.py`, which other concerns ask directly.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from ordertrack_dagster.couriers.answers import implausible_time, read_json_text
from ordertrack_dagster.couriers.description import (
    CourierDescription,
    CourierSetting,
    Interpreter,
    SettingKind,
)
from ordertrack_dagster.couriers.engine import FetchOptions, fetch_to_completion
from ordertrack_dagster.couriers.pauses import (
    MAX_INLINE_WAIT_SECONDS,
    blocking_pause,
    describe_pause,
    parse_retry_after,
)
from ordertrack_dagster.flows import FLOWS

__all__ = [
    "COURIERS",
    "DESCRIPTIONS",
    "MAX_INLINE_WAIT_SECONDS",
    "CourierBinding",
    "CourierDescription",
    "CourierSetting",
    "FetchOptions",
    "Interpreter",
    "SettingKind",
    "blocking_pause",
    "describe_pause",
    "fetch_to_completion",
    "implausible_time",
    "parse_retry_after",
    "read_json_text",
]


def _descriptions() -> dict[str, CourierDescription]:
    """The `DESCRIPTION` of every module of this package that exports one, in module name
    order: a courier module is registered by being written."""
    descriptions: dict[str, CourierDescription] = {}
    for module in pkgutil.iter_modules(__path__):
        found = getattr(importlib.import_module(f"{__name__}.{module.name}"), "DESCRIPTION", None)
        if isinstance(found, CourierDescription):
            if found.resource_key in descriptions:
                raise ValueError(f"two courier modules describe {found.resource_key!r}")
            descriptions[found.resource_key] = found
    return descriptions


#: Every courier API, by its resource key.
DESCRIPTIONS: dict[str, CourierDescription] = _descriptions()


@dataclass(frozen=True)
class CourierBinding:
    """Which resource asks the courier for a flow, and which pure function reads its answers."""

    resource_key: str
    interpret: Interpreter


def _bindings() -> dict[str, CourierBinding]:
    """Each flow of the flows table bound to the one courier that serves it, in table order."""
    bindings = {
        flow: CourierBinding(description.resource_key, interpret)
        for description in DESCRIPTIONS.values()
        for flow, interpret in description.interpreters.items()
    }
    served = sum(len(description.interpreters) for description in DESCRIPTIONS.values())
    if served != len(bindings) or bindings.keys() != FLOWS.keys():
        raise ValueError("every flow must be served by exactly one courier description")
    return {key: bindings[key] for key in FLOWS}


COURIERS: dict[str, CourierBinding] = _bindings()
