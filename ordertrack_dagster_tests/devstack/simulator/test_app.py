"""The simulator as a whole: concurrency, bulk registration, latency, the settings and
environment, the command line."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import time

import httpx
import pytest

from ordertrack_dagster.devstack.simulator import (
    SCENARIOS,
    SimulatorAdmin,
    SimulatorSettings,
    courier_apis,
    lognormal_params,
    simulator_env,
)
from ordertrack_dagster_tests.devstack.simulator.wire import B2C, TOKEN, delhivery, ship


def test_fifty_concurrent_requests_are_served_in_parallel(
    admin: SimulatorAdmin, base_url: str
) -> None:
    admin.register_shipments(ship("delhivery_b2c", f"W{i}", offset_s=i * 60) for i in range(2500))
    admin.update_settings(latency_mean_ms=300, latency_p99_ms=600)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as client:
            headers = {"Authorization": f"Token {TOKEN}"}
            batches = [",".join(f"W{i}" for i in range(b * 50, b * 50 + 50)) for b in range(50)]
            return await asyncio.gather(
                *(client.get(B2C, params={"waybill": b}, headers=headers) for b in batches)
            )

    answers = asyncio.run(burst())
    assert all(len(a.json()["ShipmentData"]) == 50 for a in answers)
    # Served side by side, not one at a time (that would be 1): the simulator saw many in
    # flight together. How many depends on how fast a loaded machine opens 50 connections.
    stats = admin.stats()["couriers"]["delhivery_b2c"]
    assert stats["max_in_flight"] >= 20 and stats["keys_requested"] == 2500


def test_bulk_registration_of_100k_shipments(admin: SimulatorAdmin, client: httpx.Client) -> None:
    couriers = [api.name for api in courier_apis()]
    assert couriers[0] == "delhivery_b2c"
    scenarios = sorted(SCENARIOS)
    shipments = (
        ship(
            couriers[i % len(couriers)],
            f"BULK{i}",
            scenarios[i % len(scenarios)],
            offset_s=i % 500 * 3600,
        )
        for i in range(100_000)
    )
    """Production-scale registration works in one call (its speed is measured by the bench)."""
    assert admin.register_shipments(shipments) == 100_000
    assert admin.health()["shipments"] == 100_000
    every = len(couriers)  # the first, delhivery_b2c, has every `every`-th shipment
    answer = delhivery(client, *(f"BULK{i}" for i in range(0, 50 * every, every)))
    assert len(answer.json()["ShipmentData"]) == 50


def test_latency_follows_the_configured_mean_and_p99() -> None:
    mu, sigma = lognormal_params(130, 530) or (0.0, 0.0)
    rng = random.Random(3)
    draws = sorted(rng.lognormvariate(mu, sigma) for _ in range(200_000))
    assert sum(draws) / len(draws) == pytest.approx(130, rel=0.03)
    assert draws[int(0.99 * len(draws))] == pytest.approx(530, rel=0.05)
    assert lognormal_params(0, 530) is None
    with pytest.raises(ValueError):
        SimulatorSettings(latency_mean_ms=200, latency_p99_ms=100)
    with pytest.raises(ValueError):
        SimulatorSettings(time_scale=-1)


def test_admin_settings_and_environment(admin: SimulatorAdmin, base_url: str) -> None:
    settings = admin.update_settings(rate_limits={"delhivery_b2c": {"limit": 75, "window_s": 30}})
    assert settings["rate_limits"]["delhivery_b2c"] == {
        "limit": 75,
        "window_s": 30,
        "enabled": True,
    }
    assert admin.settings() == settings
    before = settings["couriers"]["velocity"]
    after = admin.update_settings(couriers={"velocity": {"lockout_s": 60}})["couriers"]
    assert after["velocity"] == before | {"lockout_s": 60}  # the other fields are kept
    bad_changes = (
        {"no_such_setting": 1},
        {"time_scale": -5},
        {"rate_limits": {"dhl": {}}},
        {"couriers": {"dhl": {}}},
        {"couriers": {"velocity": {"no_such_field": 1}}},
    )
    for bad in bad_changes:
        with pytest.raises(httpx.HTTPStatusError):
            admin.update_settings(**bad)
    with pytest.raises(httpx.HTTPStatusError):
        admin.register_shipments([{"courier": "dhl", "tracking_key": "X", "order_id": "1"}])
    assert admin.health()["shipments"] == 0

    env = simulator_env(base_url + "/")
    assert env["DELHIVERY_URL"] == f"{base_url}/delhivery/api/v1/packages/json/"
    assert env["DELHIVERY_FALLBACK_URL"] == f"{base_url}/delhivery-fallback/api/v1/packages/json/"
    assert env["DELHIVERY_B2B_URL"] == f"{base_url}/delhivery-b2b"
    assert env["SHIPROCKET_URL"] == f"{base_url}/shiprocket"
    assert env["VELOCITY_URL"] == f"{base_url}/velocity"
    assert env["DELHIVERY_AUTH_TOKEN_B2C"] == TOKEN
    assert {"DELHIVERY_B2B_USERNAME", "DELHIVERY_B2B_PASSWORD", "SHIPROCKET_EMAIL"} <= set(env)
    assert {"SHIPROCKET_PASSWORD", "VELOCITY_USERNAME", "VELOCITY_PASSWORD"} <= set(env)


def test_command_line_serves_the_simulator() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "ordertrack_dagster.devstack.simulator"]
    command += ["--port", str(port), "--time-scale", "60", "--latency-mean-ms", "0"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/_admin/health", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert health.json()["status"] == "ok"
        with SimulatorAdmin(f"http://127.0.0.1:{port}") as admin:
            assert admin.settings()["time_scale"] == 60
    finally:
        server.terminate()
        server.wait(10)
