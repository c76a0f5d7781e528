"""The suite's process-leak check (conftest.py) holds alone and with worker processes (`-n`).

A test that leaves a process behind makes the run fail, naming the process, which is then
killed; with workers the worker that ran the test finds it and the controller fails the run.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from ordertrack_dagster_tests.conftest import LEAK_GRACE_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LEAKY_TEST = """
import os, pathlib, subprocess, sys

def test_leaves_a_process_behind():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    pathlib.Path(os.environ["LEAKED_PID_FILE"]).write_text(str(process.pid))

def test_leaves_nothing():
    pass
"""


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["alone", "in a worker"])
def test_a_process_left_behind_fails_the_run_and_is_killed(tmp_path, workers):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(Path(__file__).with_name("conftest.py"), suite / "conftest.py")
    (suite / "test_leaky.py").write_text(LEAKY_TEST)
    pid_file = tmp_path / "leaked.pid"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, str(suite)],
        cwd=suite, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT),
                        "LEAKED_PID_FILE": str(pid_file), LEAK_GRACE_ENV: "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout[-2000:]
    assert "2 passed" in result.stdout
    assert "processes started by the tests outlived the suite" in result.stdout
    pid = int(pid_file.read_text())
    assert f"pid {pid}:" in result.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
