"""Rate-limit pauses: reading Retry-After, and judging and describing a stored pause."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

from ordertrack_dagster.couriers.state import CourierState
from ordertrack_dagster.flows import Flow
from ordertrack_dagster.records import INDIA

DEFAULT_RETRY_AFTER_SECONDS = 300.0
# A pause shorter than this is waited out inside the run; a longer one defers the rest.
MAX_INLINE_WAIT_SECONDS = 45.0


def blocking_pause(state: CourierState, scope: str, now: datetime) -> datetime | None:
    """The stored resume time when it is too far off to wait out inside a run, else None.

    Schedules skip and unforced runs stop on such a pause: the run would only defer.
    """
    resume_at = state.paused_until(scope)
    if resume_at is None or (resume_at - now).total_seconds() <= MAX_INLINE_WAIT_SECONDS:
        return None
    return resume_at


def describe_pause(flow: Flow, resume_at: datetime) -> str:
    """How ops read a stored pause: the courier and the resume time in UTC and India time."""
    return (
        f"{flow.courier_label} is paused by a courier rate limit until "
        f"{resume_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC "
        f"({resume_at.astimezone(INDIA):%H:%M:%S} India time)"
    )


def parse_retry_after(value: str | None, now: datetime) -> datetime:
    """Retry-After as seconds, a Unix time or an HTTP date; five minutes when absent or odd."""
    default = now + timedelta(seconds=DEFAULT_RETRY_AFTER_SECONDS)
    if not value or not value.strip():
        return default
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return default
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if number > 1_000_000_000:  # a Unix time, not a delay
        return datetime.fromtimestamp(number, UTC)
    return now + timedelta(seconds=max(0.0, number))
