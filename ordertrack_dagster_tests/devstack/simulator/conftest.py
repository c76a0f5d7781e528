"""A simulator per test module (frozen clock, no latency), reset before every test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict

import httpx
import pytest

from ordertrack_dagster.devstack.simulator import SimulatorAdmin, running_simulator
from ordertrack_dagster_tests.devstack.simulator.wire import SETTINGS


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_simulator(SETTINGS) as url:
        yield url


@pytest.fixture
def admin(base_url: str) -> Iterator[SimulatorAdmin]:
    with SimulatorAdmin(base_url) as admin:
        admin.reset()
        admin.update_settings(**asdict(SETTINGS))
        yield admin


@pytest.fixture
def client(base_url: str, admin: SimulatorAdmin) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client
