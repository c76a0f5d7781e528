"""The fault suite's own stack: faults stop and restart its servers, so it is not the
session's shared one. SecantusDB keeps its data on disk, so a restart finds it again."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo.database import Database

from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.resources import history_queue
from ordertrack_dagster.resources.mongo import mongo_client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "faults" in item.nodeid.split("::")[0]:
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    storage = tmp_path_factory.mktemp("secantus-data")
    args = ["--latency-mean-ms", "5", "--latency-p99-ms", "20"]
    with EmbeddedStack(simulator_args=args, mongodb_storage=storage) as stack:
        yield stack


@pytest.fixture
def stack(fault_stack: EmbeddedStack) -> Iterator[EmbeddedStack]:
    """The fault stack, every service running again after the test and S3 trusted anew."""
    yield fault_stack
    for service in fault_stack.services:
        fault_stack.start_service(service)
    history_queue.reset_backoff()


@pytest.fixture
def db(stack: EmbeddedStack, db_name: str) -> Iterator[Database]:
    client = mongo_client(stack.env["MONGODB_URI"])
    yield client[db_name]
    client.drop_database(db_name)


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    """A Dagster instance directory with the project's dagster.yaml, for CLI runs."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    project = Path(__file__).resolve().parents[2]
    (home / "dagster.yaml").write_text((project / "dagster.yaml").read_text())
    return home
