"""Statuses written while the fetch goes on, so a long fetch (a courier's rate limit, a slow
courier) does not leave every write to its end, and a run killed mid-fetch has written what
it got.

Every `ORDERTRACK_STREAM_WRITES_EVERY_SECONDS` (20 s) the fetch hands over the answers it
got since (`couriers.engine`); this module's callback maps them and hands them to the write
path (`writer.write_updates`, which the `order_status_writes` step uses too), and what each
written part decided goes into `ordertrack_streamed`. The write step then writes only the
orders not written yet (not answered, failed, deferred, and the answers of the last
seconds), recording its own parts the same way, and reports the run as a whole; once its
table is stored the run's documents are deleted (a dead run's expire after a day). A fetch
about to wait 5 s or more (its budget spent, a courier pause) hands over first; one shorter
than the interval that never waits that long streams nothing: the write step writes
everything.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pandas as pd
from pymongo.database import Database

from ordertrack_dagster.couriers import COURIERS
from ordertrack_dagster.flows import Flow
from ordertrack_dagster.killpoints import kill_point
from ordertrack_dagster.records import FetchRecord, FetchState
from ordertrack_dagster.resources.mongo import BULK_CHUNK
from ordertrack_dagster.security.redaction import redact
from ordertrack_dagster.tracking.mapping import interpret_answers
from ordertrack_dagster.tracking.plan import Decision, StatusCatalogue
from ordertrack_dagster.tracking.selection import shared_key_holders
from ordertrack_dagster.tracking.writer import write_updates

STREAM_EVERY_ENV = "ORDERTRACK_STREAM_WRITES_EVERY_SECONDS"
DEFAULT_STREAM_EVERY = timedelta(seconds=20)
#: The longest fetch time box (the fallback flow's): with a longer interval a fetch would
#: write nothing while it goes on.
MAX_STREAM_EVERY = timedelta(hours=3)
#: The shortest time the streamed writes of a run use one reading of the shared tracking keys.
HOLDERS_FRESH_FOR = timedelta(minutes=1)
#: A slower reading is used this many times as long as it took, so that, as long as readings
#: take alike, the group of every live order costs about a tenth of the write's time (on
#: MongoDB it takes well under a second; on a slow server tens of seconds, and read at each
#: hand-over it took most of the write's time).
HOLDERS_KEPT_PER_READ_SECOND = 10


def holders_kept_for(read_seconds: float) -> float:
    """How many seconds a reading of the shared tracking keys that took `read_seconds` is
    used before it is read again."""
    return max(HOLDERS_FRESH_FOR.total_seconds(), HOLDERS_KEPT_PER_READ_SECOND * read_seconds)


def stream_every(env: Mapping[str, str] = os.environ) -> timedelta:
    """How often a fetch writes the answers it got: more often costs more, smaller MongoDB
    writes; less often leaves more unwritten when a run is killed mid-fetch."""
    text = env.get(STREAM_EVERY_ENV, "").strip()
    if not text:
        return DEFAULT_STREAM_EVERY
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_STREAM_EVERY.total_seconds():
        raise ValueError(
            f"{STREAM_EVERY_ENV}={text!r}: expected a number of seconds from 0 to "
            f"{MAX_STREAM_EVERY.total_seconds():g}"
        )
    return timedelta(seconds=seconds)


#: The run's log line at each hand-over: how far the fetch is (the UI's run log and `make run`
#: read it; `parse_fetch_progress` is its reader).
FETCH_PROGRESS = "fetch progress: asked {asked} of {selected} tracking keys"
_FETCH_PROGRESS = re.compile(r"fetch progress: asked (\d+) of (\d+) tracking keys")


def parse_fetch_progress(line: str) -> tuple[int, int] | None:
    """(asked, selected) from a line holding a `FETCH_PROGRESS` message, else None."""
    match = _FETCH_PROGRESS.search(line)
    return (int(match[1]), int(match[2])) if match else None


class StreamedWriter:
    """The fetch's `stream` callback for one run: writes the statuses of new answers, one
    bulk's worth at a time. It never raises: what it could not write, the write step writes.

    The tracking keys several live orders hold (`shared_key_holders`, one aggregation over
    every live order) are read at the first hand-over and again only when that reading is
    older than `holders_kept_for` its reading time (a minute, longer only where the reading
    itself is slow: five minutes for a 30-s reading): an order booked with a key shared with
    one this run answers is then seen within a minute on MongoDB, close to the interval of a
    check per hand-over (a burst's first hand-over may come seconds into a fetch that lasts
    its whole time box), without a group of every live order at each hand-over. The mapping
    step reads them afresh for the rest."""

    def __init__(
        self,
        db: Database,
        flow: Flow,
        pending: pd.DataFrame,
        run_id: str,
        log: logging.Logger,
        *,
        asking: int,
    ) -> None:
        self._db = db
        self._flow = flow
        self._pending = pending
        self._run_id = run_id
        self._log = log
        self._catalogue: StatusCatalogue | None = None
        self._holders: dict[str, list[str]] = {}
        self._holders_stale_at: float | None = None  # monotonic; None: not read yet
        self.written = 0
        self.asking = asking  # the keys the fetch asks, for its progress line
        self.asked = 0

    def progress(self, asked: int) -> None:
        """Log how far the fetch is (the UI's run log and `make run` show it)."""
        self.asked = asked
        self._log.info(FETCH_PROGRESS.format(asked=asked, selected=self.asking))

    def __call__(self, records: list[FetchRecord]) -> None:
        self.progress(self.asked + len(records))
        answered = [r for r in records if r.state is FetchState.ANSWERED]
        # one bulk's worth at a time: a hand-over before a long wait holds everything a burst
        # got (about 35,000 answers at Delhivery's real window), and mapping it whole holds
        # every answer's reading and row at once
        for start in range(0, len(answered), BULK_CHUNK):
            part = answered[start : start + BULK_CHUNK]
            try:
                self._write(part)
            except Exception as error:  # noqa: BLE001 - the write step writes them instead
                self._log.warning(
                    f"{len(part)} answers not written while fetching "
                    f"({type(error).__name__}: {redact(str(error))[:300]}); the write step will"
                )

    def _write(self, answered: list[FetchRecord]) -> None:
        if self._catalogue is None:
            self._catalogue = StatusCatalogue.load(self._db)
        keys = {r.tracking_key for r in answered}
        orders = self._pending[self._pending["tracking_key"].isin(keys)]
        raw = pd.DataFrame([r.__dict__ for r in answered])
        now = datetime.now(UTC)
        stale_at = self._holders_stale_at
        if stale_at is None or time.monotonic() > stale_at:
            started = time.monotonic()
            self._holders = shared_key_holders(self._db, self._flow, now)
            read_at = time.monotonic()
            self._holders_stale_at = read_at + holders_kept_for(read_at - started)
        interpret = COURIERS[self._flow.key].interpret
        updates = interpret_answers(orders, raw, interpret, now, self._holders)
        write_updates(
            self._db, updates, self._flow, self._catalogue, self._run_id, after_part=self._count
        )
        kill_point("after_streamed_write")

    def _count(self, decisions: list[Decision]) -> None:
        """A part is written and recorded: count it (the fetch's metadata reports it)."""
        self.written += len(decisions)
