"""One local production deployment (deploy/'s files on PostgreSQL) for the deploy tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo.database import Database

from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.resources.mongo import mongo_client
from ordertrack_dagster_tests.deploy.local_deployment import Deployment, local_deployment
from ordertrack_dagster_tests.helpers import SeededOrder, seed_orders
from ordertrack_dagster_tests.orchestration import daemon_location

FLOW = daemon_location.FLOW
DB_NAME = "deploy_check"
# Courier answers take seconds, so a run lasts long enough to watch a second one wait.
SLOW_COURIER = ["--latency-mean-ms", "5000", "--latency-p99-ms", "7000"]


@pytest.fixture(scope="module")
def deploy_stack() -> Iterator[EmbeddedStack]:
    """A stack of its own: its slow courier must not slow the other tests."""
    with EmbeddedStack(simulator_args=SLOW_COURIER) as stack:
        yield stack


@pytest.fixture(scope="module")
def deploy_db(deploy_stack: EmbeddedStack) -> Database:
    return mongo_client(deploy_stack.env["MONGODB_URI"])[DB_NAME]


@pytest.fixture(scope="module")
def deploy_orders(deploy_stack: EmbeddedStack, deploy_db: Database) -> list[SeededOrder]:
    """Some orders of the flow for the deployment's runs to poll."""
    return seed_orders(deploy_db, deploy_stack.simulator, FLOW, ["in_transit", "delivered"] * 5)


@pytest.fixture(scope="module")
def deployment(
    deploy_stack: EmbeddedStack,
    deploy_orders: list[SeededOrder],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """Postgres, code server, daemon and webserver, with `deploy_orders` to poll.

    The code server loads the project's definitions with the flow's schedule ticking every
    minute (`daemon_location`), so that a tick comes within the test.
    """
    workdir: Path = tmp_path_factory.mktemp("deployment")
    env = {**deploy_stack.env, "MONGODB_DB": DB_NAME}
    with local_deployment(env, workdir, daemon_location.__name__) as running:
        yield running
