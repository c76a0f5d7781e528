"""Named kill points in the write path, for the fault suite (RELIABILITY.md).

`kill_point("between_bulks")` does nothing unless the process was started with
`ORDERTRACK_KILL_AT=between_bulks`; then it SIGKILLs its own process right there, as a host
loss would. Nothing is cleaned up and no Dagster event is written, which is the point: the
suite then checks that the next run repairs whatever the dead one left half done.
"""

import os
import signal

KILL_AT_ENV = "ORDERTRACK_KILL_AT"


def kill_point(name: str) -> None:
    """SIGKILL this process when `ORDERTRACK_KILL_AT` names this point."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
