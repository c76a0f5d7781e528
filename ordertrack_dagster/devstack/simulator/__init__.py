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

The package mirrors ``ordertrack_dagster.couriers``: one module per simulated courier
(``delhivery`` for the express B2C and fallback paths, ``delhivery_b2b``, ``shiprocket``,
``velocity``) holds that courier's routes, answers, status tables, sessions, error shapes and
its `SIMULATOR` (a `CourierSim`: its APIs, their live quota and the defaults of its own
settings, and how the demo's orders of its flows look). ``registry`` finds those modules and
derives the rest from them: the default quotas and settings, the routes, the product's
environment, the demo's orders. Shared, and naming no courier:
``lifecycle`` (scenarios, clock, shipments), ``core`` (state and the plumbing every courier
request goes through), ``faults``, ``ratelimit``, ``settings``, ``admin`` (the admin API and its
client), ``base`` (what courier modules share), ``description`` and ``app`` (assembly, command
line).

Run it with ``python -m ordertrack_dagster.devstack.simulator --port 8765``.
"""

from ordertrack_dagster.devstack.simulator.admin import SimulatorAdmin
from ordertrack_dagster.devstack.simulator.app import (
    create_app,
    main,
    running_simulator,
    simulator_env,
)
from ordertrack_dagster.devstack.simulator.description import CourierSim, DemoOrders
from ordertrack_dagster.devstack.simulator.faults import FAULT_KINDS
from ordertrack_dagster.devstack.simulator.lifecycle import (
    END_STEPS,
    SCENARIOS,
    STEPS,
    ShipmentSpec,
)
from ordertrack_dagster.devstack.simulator.ratelimit import RateLimit
from ordertrack_dagster.devstack.simulator.registry import courier_apis, demo_orders, simulators
from ordertrack_dagster.devstack.simulator.settings import SimulatorSettings, lognormal_params

__all__ = [
    "END_STEPS",
    "FAULT_KINDS",
    "CourierSim",
    "DemoOrders",
    "SCENARIOS",
    "STEPS",
    "RateLimit",
    "ShipmentSpec",
    "SimulatorAdmin",
    "SimulatorSettings",
    "courier_apis",
    "create_app",
    "demo_orders",
    "lognormal_params",
    "main",
    "running_simulator",
    "simulators",
    "simulator_env",
]
