"""Child processes that are stopped whole: each runs in its own process group.

A server, `dagster dev` or a `dagster` CLI run may start children of its own (webserver,
daemon, code servers). Signalling only the direct child would leave those behind, so every
child of the stack is started as a new session and stopped by signalling its whole group.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the thread that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_group(command: Sequence[str], **popen_args: Any) -> subprocess.Popen[bytes]:
    """Start `command` as the leader of a new process group that dies with this process."""
    return subprocess.Popen(
        list(command),
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        **popen_args,
    )


def signal_group(process: subprocess.Popen[Any], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def stop_groups(
    processes: Iterable[subprocess.Popen[Any]],
    *,
    first_signal: int = signal.SIGTERM,
    grace_seconds: float = 5.0,
) -> None:
    """Ask every group to stop, wait up to `grace_seconds` in all, then kill what is left."""
    processes = list(processes)
    for process in processes:
        signal_group(process, first_signal)
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
        # Whatever is left of the group (a stuck server, a grandchild) is killed outright.
        signal_group(process, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running_group(
    command: Sequence[str], *, grace_seconds: float = 30.0, **popen_args: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """A process group that is stopped (SIGINT first, as Ctrl-C would) when the block ends."""
    process = spawn_group(command, **popen_args)
    try:
        yield process
    finally:
        if process.poll() is None or _group_alive(process.pid):
            stop_groups([process], first_signal=signal.SIGINT, grace_seconds=grace_seconds)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def install_stop_signals() -> None:
    """SIGINT and SIGTERM both raise KeyboardInterrupt, whatever the parent set up.

    A shell started in the background starts its children with SIGINT ignored, and an
    ignored signal is inherited: without this, Ctrl-C (or a test's SIGINT) would never stop
    the stack. SIGTERM (a plain `kill`) unwinds the same `finally` blocks as Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def absolute_path(text: str) -> Path:
    """A command-line path made absolute against the current directory (DAGSTER_HOME needs it)."""
    return Path(text).expanduser().resolve()
