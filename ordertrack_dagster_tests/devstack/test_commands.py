"""`python -m ordertrack_dagster.devstack up|run|dev`: paths, signals and clean stops.

The commands must stop every process they started however their parent set up signals:
a shell started in the background hands its children SIGINT ignored, and CI runs in an
environment we do not control.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from ordertrack_dagster.devstack.__main__ import build_parser
from ordertrack_dagster.devstack.stack import free_port
from ordertrack_dagster_tests.leaks import describe, marked_processes, wait_until_gone

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEST_MARK = "ORDERTRACK_COMMAND_TEST"


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _python(args: list[str], *, sigint_ignored: bool = False, mark: str = "") -> subprocess.Popen:
    """This interpreter run from the checkout, output captured, optionally SIGINT-deaf."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, TEST_MARK: mark},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint if sigint_ignored else None,
    )


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("command", ["up", "run", "dev"])
def test_a_relative_workdir_is_made_absolute(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DAGSTER_HOME lives in the workdir, and Dagster refuses a relative DAGSTER_HOME."""
    monkeypatch.chdir(tmp_path)
    assert build_parser().parse_args([command]).workdir == tmp_path / ".devstack"
    given = build_parser().parse_args([command, "--workdir", "here/there"])
    assert given.workdir == tmp_path / "here" / "there"


@pytest.mark.parametrize(
    ("stop_signal", "sigint_ignored"),
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, True)],
    ids=["ctrl-c", "ctrl-c-from-a-background-shell", "kill-from-a-background-shell"],
)
def test_up_prints_the_environment_and_stops_on_a_signal(
    tmp_path: Path, stop_signal: signal.Signals, sigint_ignored: bool
) -> None:
    mark = uuid.uuid4().hex
    up = _python(
        ["-m", "ordertrack_dagster.devstack", "up", "--orders", "40", "--workdir", str(tmp_path)],
        sigint_ignored=sigint_ignored,
        mark=mark,
    )
    assert up.stdout is not None and up.stderr is not None
    try:
        exports: dict[str, str] = {}
        while not {"MONGODB_DB", "MONGODB_URI", "SMTP_PORT"} <= set(exports):
            line = up.stdout.readline()
            assert line, up.stderr.read()
            name, _, value = shlex.split(line)[1].partition("=")
            exports[name] = value
        with MongoClient(exports["MONGODB_URI"]) as client:
            assert client[exports["MONGODB_DB"]].orders.count_documents({}) >= 40
    finally:
        up.send_signal(stop_signal)
        assert up.wait(30) == 0
    assert _refuses(int(exports["SMTP_PORT"]))
    assert [describe(p) for p in wait_until_gone(TEST_MARK, mark, seconds=10)] == []


@pytest.mark.slow
def test_dev_stops_dagster_dev_and_everything_it_started(tmp_path: Path) -> None:
    """`kill` on `make dev` stops the webserver, the daemon and the code servers too."""
    mark, port = uuid.uuid4().hex, free_port()
    dev = _python(
        ["-m", "ordertrack_dagster.devstack", "dev", "--orders", "20", "--port", str(port),
         "--workdir", str(tmp_path)],
        sigint_ignored=True,
        mark=mark,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not _answers(f"http://127.0.0.1:{port}/server_info"):
            assert dev.poll() is None, dev.stderr.read() if dev.stderr else ""
            assert time.monotonic() < deadline, "the Dagster UI did not come up"
            time.sleep(1)
        started = {" ".join(p.cmdline()) for p in marked_processes(TEST_MARK, mark)}
        assert any("dagster-daemon" in line or "daemon" in line for line in started), started
    finally:
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(60) == 0
    assert [describe(p) for p in wait_until_gone(TEST_MARK, mark, seconds=15)] == []
    assert _refuses(port)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_services_die_with_a_killed_parent(tmp_path: Path) -> None:
    """Even a parent killed outright (no cleanup runs) leaves no server behind."""
    parent = _python(
        [
            "-c",
            "import sys, time\n"
            "from ordertrack_dagster.devstack.stack import EmbeddedStack\n"
            f"stack = EmbeddedStack(services=('slack', 'smtp'), workdir={str(tmp_path)!r})\n"
            "stack.start()\n"
            "print(stack.ports['slack'], stack.ports['smtp'], flush=True)\n"
            "time.sleep(60)\n",
        ]
    )
    assert parent.stdout is not None and parent.stderr is not None
    line = parent.stdout.readline()
    assert line, parent.stderr.read()
    ports = [int(port) for port in line.split()]
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while not all(_refuses(port) for port in ports):
        assert time.monotonic() < deadline, "a server outlived its parent"
        time.sleep(0.1)
