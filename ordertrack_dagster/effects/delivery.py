"""Sending claimed outbox documents: each once, its attempt recorded in small groups, a breaker
that stops after repeated transient failures, and a report for the asset.

A group is written after `RECORD_EVERY` messages or `RECORD_WITHIN_SECONDS` after its first,
whichever comes first, and before sending stops for any reason: a crash can repeat at most the
unrecorded group (the CRM drops even those by their idempotency key), and the recording costs
a round trip per group, not per message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import UpdateOne

from ordertrack_dagster.effects.documents import (
    State,
    attempt_record,
    attempt_update,
    dead_update,
)
from ordertrack_dagster.effects.outbox import Outbox
from ordertrack_dagster.security.redaction import redact

# This many transient failures in a row (the service is down) stop the run's sending: the
# rest stays due for the next run instead of each waiting for its own time-out.
BREAKER_THRESHOLD = 3
RECORD_EVERY = 50
RECORD_WITHIN_SECONDS = 1.0
KEPT_ERRORS = 10


class DeliveryError(Exception):
    """One delivery failed. A transient one (timeout, refused, 5xx) may trip the breaker."""

    def __init__(self, message: str, *, http_status: int | None = None, transient: bool = True):
        super().__init__(message)
        self.http_status = http_status
        self.transient = transient


class DeliveryDeferred(Exception):
    """The service asked us to come back later (Slack's 429): not a failure, no retry count."""

    def __init__(self, message: str, retry_at: datetime, http_status: int | None = None):
        super().__init__(message)
        self.retry_at = retry_at
        self.http_status = http_status


#: Sends one outbox document; returns the HTTP status (None when the protocol has none).
Sender = Callable[[dict[str, Any]], int | None]


@dataclass
class DeliveryReport:
    """What one run's sending did, for the asset's metadata and log."""

    sent: int = 0
    failed: int = 0
    deferred: int = 0
    not_attempted: int = 0
    became_dead: int = 0
    errors: list[str] = field(default_factory=list)
    stopped: str | None = None  # why sending stopped early (rate limit, service down)

    def note(self, message: str) -> None:
        message = redact(message)
        if message not in self.errors and len(self.errors) < KEPT_ERRORS:
            self.errors.append(message)


def _as_delivery_error(error: Exception) -> DeliveryError:
    """An unexpected exception is a permanent failure of this one delivery."""
    if isinstance(error, DeliveryError):
        return error
    return DeliveryError(f"{type(error).__name__}: {error}", transient=False)


class _Sending:
    """One run's sending: its report, the breaker's count, the attempts not yet recorded."""

    def __init__(self, outbox: Outbox, send: Sender) -> None:
        self.outbox = outbox
        self.send = send
        self.report = DeliveryReport()
        self.in_a_row = 0
        self.unrecorded: list[UpdateOne] = []
        self.oldest = 0.0

    def attempt(self, doc: dict[str, Any]) -> None:
        """Send one document and queue the record of how it went."""
        started_at, started = self.outbox.clock(), time.perf_counter()
        if not self.unrecorded:
            self.oldest = started
        if self.outbox.policy.key_forgotten_by(doc, started_at):
            self._expired(doc, started_at, started)
        else:
            self._send(doc, started_at, started)
        if (
            len(self.unrecorded) >= RECORD_EVERY
            or time.perf_counter() - self.oldest >= RECORD_WITHIN_SECONDS
        ):
            self.record()

    def _send(self, doc: dict[str, Any], started_at: datetime, started: float) -> None:
        try:
            http_status = self.send(doc)
        except DeliveryDeferred as deferred:
            self._deferred(doc, deferred, started_at, started)
        except Exception as error:  # one bad delivery must not strand the others
            self._failed(doc, _as_delivery_error(error), started_at, started)
        else:
            self._sent(doc, http_status, started_at, started)

    def record(self) -> None:
        group, self.unrecorded = self.unrecorded, []  # a failed write is not tried twice
        self.outbox.record(group)

    def _sent(
        self, doc: dict[str, Any], http_status: int | None, started_at: datetime, started: float
    ) -> None:
        attempt = attempt_record(started_at, started, "sent", http_status, None)
        sent = {"state": State.SENT.value, "sent_at": attempt["at"]}
        # the report now lives where it was sent
        self.unrecorded.append(attempt_update(doc, attempt, sent, unset=("content",)))
        self.report.sent += 1
        self.in_a_row = 0

    def _deferred(
        self, doc: dict[str, Any], deferred: DeliveryDeferred, started_at: datetime, started: float
    ) -> None:
        attempt = attempt_record(
            started_at, started, "deferred", deferred.http_status, str(deferred)
        )
        self.unrecorded.append(attempt_update(doc, attempt, {"next_attempt_at": deferred.retry_at}))
        self.report.deferred += 1
        self.report.stopped = str(deferred)

    def _expired(self, doc: dict[str, Any], started_at: datetime, started: float) -> None:
        """Too late to send with this key (a run came late): a dead letter, not a call."""
        reason = self.outbox.policy.key_horizon_text()
        attempt = attempt_record(started_at, started, "expired", None, reason)
        self.unrecorded.append(dead_update(doc, attempt, {}, failures=0))
        self.report.became_dead += 1
        self.report.note(reason)

    def _failed(
        self, doc: dict[str, Any], failure: DeliveryError, started_at: datetime, started: float
    ) -> None:
        attempt = attempt_record(started_at, started, "failed", failure.http_status, str(failure))
        update, dead = self.outbox.failure(doc, attempt)
        self.unrecorded.append(update)
        self.report.failed += 1
        self.report.became_dead += dead
        self.report.note(str(failure))
        self.in_a_row = self.in_a_row + 1 if failure.transient else 0
        if self.in_a_row >= BREAKER_THRESHOLD:
            self.report.stopped = f"{self.in_a_row} failures in a row, the service looks down"


def deliver(outbox: Outbox, docs: Iterable[dict[str, Any]], send: Sender) -> DeliveryReport:
    """Send each claimed document once, until sending stops (a deferral, the breaker, or the
    run's time box for this effect); the untried are released, due at once."""
    sending = _Sending(outbox, send)
    box_ends = time.monotonic() + outbox.policy.send_budget_seconds
    untried: list[dict[str, Any]] = []
    try:
        for doc in docs:
            if sending.report.stopped is None and time.monotonic() >= box_ends:
                budget = outbox.policy.send_budget_seconds
                sending.report.stopped = f"time box of {budget:g} s used up"
            if sending.report.stopped is None:
                sending.attempt(doc)
            else:
                untried.append(doc)
    finally:
        sending.record()
    outbox.release(untried)
    sending.report.not_attempted = len(untried)
    return sending.report
