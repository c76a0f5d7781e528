"""One module per courier API; this registry binds each flow to its resource and reader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ordertrack_dagster.couriers import delhivery, delhivery_b2b, shiprocket, velocity
from ordertrack_dagster.couriers.base import Interpretation, OrderContext

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
