"""The `dagster` command line, run inside a process that records its own MongoDB commands.

The benchmark launches the `dagster` CLI through this module so that the run process itself
reports every command it sent (pymongo's command monitoring: when, how long, which command on
which collection), whichever asset or resource sent it, and its own peak memory. The record is
written as JSON when the process exits; everything else about the run is the plain CLI.

Usage: `python -m ordertrack_dagster.bench.probe <record.json> <dagster arguments...>`
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
import threading
import time
from pathlib import Path

from pymongo import monitoring


class CommandRecorder(monitoring.CommandListener):
    """Every command as (started at, seconds waited, command, collection)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[object, int], tuple[float, str]] = {}
        self.commands: list[tuple[float, float, str, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        collection = target if isinstance(target, str) else ""
        with self._lock:
            self._open[(event.connection_id, event.request_id)] = (time.time(), collection)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._finish(event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._finish(event)

    def _finish(
        self, event: monitoring.CommandSucceededEvent | monitoring.CommandFailedEvent
    ) -> None:
        with self._lock:
            begun = self._open.pop((event.connection_id, event.request_id), None)
            if begun is not None:
                at, collection = begun
                self.commands.append(
                    (round(at, 4), event.duration_micros / 1e6, event.command_name, collection)
                )

    def dump(self, path: Path) -> None:
        with self._lock:
            path.write_text(json.dumps({"commands": self.commands, "peak_rss_kib": peak_rss_kib()}))


def peak_rss_kib() -> int:
    """This process's own peak resident memory (VmHWM).

    Not `ru_maxrss`: Linux carries the parent's peak into a child started by vfork + exec, so
    a small run launched by a big benchmark process would report the benchmark's memory.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str]) -> None:
    """Record commands into `argv[0]`, then run the `dagster` script with the rest."""
    record, dagster_args = Path(argv[0]), argv[1:]
    recorder = CommandRecorder()
    monitoring.register(recorder)  # before any client exists, so every client reports
    atexit.register(recorder.dump, record)
    script = Path(sys.executable).parent / "dagster"
    sys.argv = [str(script), *dagster_args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
