"""Shared fixtures: one embedded stack of real local servers for the whole session.

Each test gets its own MongoDB database and its own key prefix, so tests never see each
other's data even though they share the servers.
"""

import contextlib
import os
import uuid
from collections.abc import Iterator

import psutil
import pytest
from pymongo.database import Database

from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.resources.mongo import mongo_client
from ordertrack_dagster_tests import scheduling
from ordertrack_dagster_tests.leaks import describe, wait_until_gone


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Alone, keep the whole-flow tests last: they are the slowest and need everything else
    green. In worker processes (`-n`), start the longest first instead (`scheduling.py`):
    the short ones fill the gaps after."""
    if hasattr(config, "workerinput"):
        scheduling.in_worker_order(items)
    else:
        items.sort(key=lambda item: bool(item.get_closest_marker("slow")))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadscope` (`make test`) by test rather than by module, longest first."""
    if config.getvalue("dist") != "loadscope":
        return None
    return scheduling.LongestFirstScheduling(config, log)


os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


# Every process a test starts inherits this mark (unless the test hands it a clean
# environment), so one that outlives the suite is found even after it was re-parented.
SESSION_MARK = "ORDERTRACK_TEST_SESSION"
os.environ[SESSION_MARK] = uuid.uuid4().hex


#: How long the end of the session waits for the tests' processes to end before calling them
#: left behind (the leak check's own test shortens it: its leak never ends).
LEAK_GRACE_ENV = "ORDERTRACK_TEST_LEAK_GRACE_SECONDS"

#: What the workers (`-n`) found left behind, reported by the controller at the end.
_LEFT_ON_WORKERS: list[str] = []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run, naming them, when processes started by the tests are still alive.

    A leak is then seen where it happened instead of being inherited by the next run; the
    leftovers are killed so that they hold no port or file. With workers, each checks the
    processes of its own mark (its tests' children carry it) and hands what it found to the
    controller, which checks after the workers stopped (last: they carry its mark).
    """
    grace = float(os.environ.get(LEAK_GRACE_ENV, "10"))
    leftovers = wait_until_gone(SESSION_MARK, os.environ[SESSION_MARK], seconds=grace)
    leftovers += [p for p in psutil.Process().children(recursive=True) if p not in leftovers]
    lines = [describe(process) for process in leftovers]
    for process in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    worker_output = getattr(session.config, "workeroutput", None)
    if worker_output is not None:
        worker_output["leftover_processes"] = lines
        return
    lines += _LEFT_ON_WORKERS
    if not lines:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        listed = "\n  ".join(lines)
        reporter.write_line(f"processes started by the tests outlived the suite:\n  {listed}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """A worker stopped: keep what it found left behind for the controller's verdict."""
    _LEFT_ON_WORKERS.extend(getattr(node, "workeroutput", {}).get("leftover_processes", []))
