"""One module per courier API; this registry binds each flow to its resource and reader.

What other concerns need of the couriers is imported from here (or `state.py`): running a
fetch, judging a stored pause, reading Retry-After and stored answer text. The engine, the
answer helpers and the batch failures stay internal to this package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ordertrack_dagster.couriers import delhivery, delhivery_b2b, shiprocket, velocity
from ordertrack_dagster.couriers.answers import implausible_time, read_json_text
from ordertrack_dagster.couriers.engine import FetchOptions, fetch_to_completion
from ordertrack_dagster.couriers.pauses import (
    MAX_INLINE_WAIT_SECONDS,
    blocking_pause,
    describe_pause,
    parse_retry_after,
)
from ordertrack_dagster.records import Interpretation, OrderContext

__all__ = [
    "COURIERS",
    "MAX_INLINE_WAIT_SECONDS",
    "CourierBinding",
    "FetchOptions",
    "Interpreter",
    "blocking_pause",
    "describe_pause",
    "fetch_to_completion",
    "implausible_time",
    "parse_retry_after",
    "read_json_text",
]

Interpreter = Callable[[Any, OrderContext, datetime], Interpretation]


@dataclass(frozen=True)
class CourierBinding:
    """Which resource asks the courier for a flow, and which pure function reads its answers."""

    resource_key: str
    interpret: Interpreter


COURIERS: dict[str, CourierBinding] = {
    "delhivery_b2c": CourierBinding("delhivery", delhivery.interpret_express),
    "delhivery_b2b": CourierBinding("delhivery_b2b", delhivery_b2b.interpret),
    "shiprocket": CourierBinding("shiprocket", shiprocket.interpret),
    "velocity": CourierBinding("velocity", velocity.interpret),
    "delhivery_fallback": CourierBinding("delhivery", delhivery.interpret_fallback),
}
