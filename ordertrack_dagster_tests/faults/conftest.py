"""The fault suite's own stack: faults stop and restart its servers, so it is not the
session's shared one. SecantusDB keeps its data on disk, so a restart finds it again."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from ordertrack_dagster.devstack.demo import prepare_dagster_home
from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.resources import history_queue
from ordertrack_dagster.resources.mongo import TIMEOUTS, close_client
from ordertrack_dagster_tests.faults.proxy import TcpProxy

#: The client time-outs of the runs that go through the proxy: short, so a stall fails a run
#: in seconds rather than minutes (the product's own are in `resources/mongo.py`).
PROXY_TIMEOUT_MS = 1_500


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
def dagster_home(tmp_path: Path) -> Path:
    """A Dagster instance directory with the project's dagster.yaml, for CLI runs."""
    return prepare_dagster_home(tmp_path)


@pytest.fixture
def proxy(
    stack: EmbeddedStack, stack_env: dict, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TcpProxy]:
    """A proxy in front of SecantusDB that can cut or stall; the test's runs go through it."""
    with TcpProxy(stack.ports["mongodb"], lifetime=240) as through:
        uri = through.mongodb_uri(**dict.fromkeys(TIMEOUTS, PROXY_TIMEOUT_MS))
        stack_env["MONGODB_URI"] = uri
        monkeypatch.setenv("MONGODB_URI", uri)
        yield through
        close_client(uri)
