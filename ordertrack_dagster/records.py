"""What crosses concerns about one tracking key: how asking went, what the answer meant.

The couriers produce these, tracking maps and writes them, analytics reads them back from
the history; each of those imports them from here, never from a courier's engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

from ordertrack_dagster.statuses import Canonical

#: The time zone couriers write zone-less times in and ops read times in.
INDIA = ZoneInfo("Asia/Kolkata")


class Outcome(StrEnum):
    """What became of one tracking key in one run."""

    MAPPED = "mapped"  # the raw status maps onto a canonical status
    NO_CHANGE = "no_change"  # the mapping says "no change"
    UNMAPPED = "unmapped"  # unknown raw status: alert, treated as no change
    REFERENCE_MISMATCH = "reference_mismatch"  # answered for another order: alert, no update
    NOT_FOUND = "not_found"  # asked and not answered: alert, stays due
    FAILED = "failed"  # transport or parse failure: alert, stays due
    DEFERRED = "deferred"  # not asked (rate limit pause or budget): stays due

    @property
    def was_read(self) -> bool:
        """Contract §6: the courier's answer was received and read, so the poll is recorded."""
        return self in _READ_OUTCOMES


_READ_OUTCOMES = frozenset(
    {Outcome.MAPPED, Outcome.NO_CHANGE, Outcome.UNMAPPED, Outcome.REFERENCE_MISMATCH}
)


@dataclass(frozen=True)
class OrderContext:
    """What a courier module may need of the order to read its answer."""

    order_id: str
    tracking_key: str


@dataclass(frozen=True)
class Interpretation:
    """One tracking key's answer, read and mapped (the pure half of a courier module)."""

    outcome: Outcome
    courier_status: str | None = None  # what is stored in orders.courier_status
    status: Canonical | None = None  # set only for Outcome.MAPPED
    event_time: datetime | None = None  # the courier's time for the status, UTC
    alert: str | None = None  # why ops should look, if they should
    stop_tracking: bool = False  # set being_tracked: false (fallback end states)


class FetchState(StrEnum):
    """How asking about one key went, before its answer is read."""

    ANSWERED = "answered"
    NOT_ANSWERED = "not_answered"  # the courier left it out or said it does not know it
    FAILED = "failed"  # transport, HTTP, login or shape failure after bounded retries
    DEFERRED = "deferred"  # not asked: rate-limit pause or request budget


#: `FetchRecord.batch` of a key never sent: an odd key, recorded as failed.
ODD_KEY_BATCH = -1


@dataclass(frozen=True)
class FetchRecord:
    """One row per tracking key asked: exactly what came back, kept for analysts."""

    tracking_key: str
    state: FetchState
    batch: int
    http_status: int | None
    fetched_at: datetime
    latency_ms: float | None
    attempts: int
    raw: str | None  # this key's answer as JSON text; None when there was none
    error: str | None


@dataclass
class FetchStats:
    """Counts for the run's metadata and the benchmark."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    logins: int = 0
    batches_failed: int = 0
    batches_deferred: int = 0
    paused_until: datetime | None = None
    # the budget's last settlement failed: its unused reservation stays counted for a window
    budget_unsettled: str | None = None


@dataclass(repr=False)
class FetchResult:
    records: list[FetchRecord]
    stats: FetchStats = field(default_factory=FetchStats)

    def __repr__(self) -> str:
        # asyncio.run() reprs its task's result on the way out (the SIGINT handler check of
        # Python 3.11); the default repr would spell out every record of a 36,000-key run.
        return f"FetchResult({len(self.records)} records, {self.stats!r})"
