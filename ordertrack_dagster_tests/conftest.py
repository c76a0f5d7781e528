"""Shared fixtures: one embedded stack of real local servers for the whole session.

Each test gets its own MongoDB database and its own key prefix, so tests never see each
other's data even though they share the servers.
"""

import os
import uuid
from collections.abc import Iterator

import pytest
from pymongo.database import Database

from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.resources.mongo import mongo_client


@pytest.fixture(scope="session")
def stack() -> Iterator[EmbeddedStack]:
    """Every server the product talks to, started once, stopped at the end of the session."""
    with EmbeddedStack(simulator_args=["--latency-mean-ms", "5", "--latency-p99-ms", "20"]) as s:
        yield s


@pytest.fixture
def db_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def db(stack: EmbeddedStack, db_name: str) -> Iterator[Database]:
    """A fresh database on the stack's MongoDB, dropped afterwards."""
    client = mongo_client(stack.env["MONGODB_URI"])
    yield client[db_name]
    client.drop_database(db_name)


@pytest.fixture
def stack_env(stack: EmbeddedStack, db_name: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The stack's environment, applied to this process, with this test's database."""
    env = {**stack.env, "MONGODB_DB": db_name}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return env


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the whole-flow tests last: they are the slowest and need everything else green."""
    items.sort(key=lambda item: bool(item.get_closest_marker("slow")))


os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
