"""One module per courier API, each exporting its `DESCRIPTION`; the registries of the
couriers (`DESCRIPTIONS`, and `COURIERS` binding each flow to its resource and reader) are
derived from those descriptions, as are the settings map and the settings' checks and
redaction (`ordertrack_dagster.settings`).

What other concerns need of the couriers is imported from here: running a fetch, judging a
stored pause, reading Retry-After and stored answer text. Every other module of this package
is internal to it; what the couriers store (pauses, budget windows, tokens, login blocks) is
kept through the shared store, `resources/state.py`, which other concerns ask directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from ordertrack_dagster.couriers import delhivery, delhivery_b2b, shiprocket, velocity
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

#: Every courier API, by its resource key: the one list a new courier module is added to.
DESCRIPTIONS: dict[str, CourierDescription] = {
    module.DESCRIPTION.resource_key: module.DESCRIPTION
    for module in (delhivery, delhivery_b2b, shiprocket, velocity)
}


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
