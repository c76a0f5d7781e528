"""Assembly: the ASGI app serving every simulated courier, the environment that points
the product at it, a background server for tests and the command line."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from ordertrack_dagster.devstack.simulator.admin import AdminApi
from ordertrack_dagster.devstack.simulator.core import CourierSimulator
from ordertrack_dagster.devstack.simulator.registry import simulators
from ordertrack_dagster.devstack.simulator.settings import SimulatorSettings


def create_app(settings: SimulatorSettings | None = None) -> Starlette:
    """The simulator as one ASGI app serving every courier under its own path prefix."""
    sim = CourierSimulator(settings or SimulatorSettings(), simulators())
    routes = [
        Route(path, sim.endpoint(api, endpoint, handler), methods=[method])
        for api in sim.couriers.values()
        for path, endpoint, method, handler in api.routes()
    ]
    app = Starlette(routes=routes + AdminApi(sim).routes())
    app.state.simulator = sim
    return app


def simulator_env(base_url: str, settings: SimulatorSettings | None = None) -> dict[str, str]:
    """Environment that points the product's courier clients at a simulator."""
    s = settings or SimulatorSettings()
    base = base_url.rstrip("/")
    env: dict[str, str] = {}
    for simulator in simulators():
        for api in simulator.apis:
            env |= api.env(base, s.couriers[simulator.name])
    return env


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
