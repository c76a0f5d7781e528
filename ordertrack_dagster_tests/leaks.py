"""Finding the processes a test started, wherever they were re-parented to."""

from __future__ import annotations

import time

import psutil


def marked_processes(mark: str, value: str) -> list[psutil.Process]:
    """Live processes, other than this one, whose environment holds `mark=value`."""
    found, me = [], psutil.Process().pid
    for process in psutil.process_iter():
        try:
            if (
                process.pid != me
                and process.environ().get(mark) == value
                and process.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_until_gone(mark: str, value: str, seconds: float) -> list[psutil.Process]:
    """The marked processes still alive after waiting up to `seconds` for them to end."""
    deadline = time.monotonic() + seconds
    while (alive := marked_processes(mark, value)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {process.pid}"
