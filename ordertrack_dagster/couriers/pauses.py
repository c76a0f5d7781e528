"""Rate-limit pauses: reading Retry-After, and judging and describing a stored pause."""

from __future__ import annotations

import email.utils
import math
from datetime import UTC, datetime, timedelta

import httpx

from ordertrack_dagster.couriers.failures import RateLimited
from ordertrack_dagster.flows import Flow
from ordertrack_dagster.records import INDIA
from ordertrack_dagster.resources.state import MAX_PAUSE, SharedState

DEFAULT_RETRY_AFTER_SECONDS = 300.0
# A pause shorter than this is waited out inside the run; a longer one defers the rest.
MAX_INLINE_WAIT_SECONDS = 45.0


def blocking_pause(state: SharedState, scope: str, now: datetime) -> datetime | None:
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


def rate_limited(response: httpx.Response, now: datetime) -> RateLimited:
    """A 429 as the exception the engine pauses on, noting an unusable Retry-After."""
    resume_at, note = read_retry_after(response.headers.get("Retry-After"), now)
    return RateLimited(resume_at, response.status_code, note)


def parse_retry_after(value: str | None, now: datetime) -> datetime:
    """Retry-After as seconds, a Unix time or an HTTP date; five minutes when absent or odd;
    never later than MAX_PAUSE from now (see `read_retry_after`)."""
    return read_retry_after(value, now)[0]


def read_retry_after(value: str | None, now: datetime) -> tuple[datetime, str | None]:
    """The resume time, and a note naming the value received when it was unusable or was
    clamped: `inf`, `1e308`, year 9999, a negative delay or garbage never raise and never
    stop a courier for longer than MAX_PAUSE."""
    default = now + timedelta(seconds=DEFAULT_RETRY_AFTER_SECONDS)
    if not value or not value.strip():
        return default, None
    text = value.strip()
    shown = repr(text[:60])
    resume_at = _resume_time(text, now)
    if resume_at is None:
        return default, f"Retry-After {shown} unreadable: paused {DEFAULT_RETRY_AFTER_SECONDS:g} s"
    if resume_at > now + MAX_PAUSE:
        return now + MAX_PAUSE, f"Retry-After {shown} clamped to {MAX_PAUSE}"
    return max(resume_at, now), None


def _resume_time(text: str, now: datetime) -> datetime | None:
    try:
        number = float(text)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, OverflowError):
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if math.isnan(number):
        return None
    if number > 1_000_000_000:  # a Unix time, not a delay
        try:
            return datetime.fromtimestamp(number, UTC)
        except (OverflowError, OSError, ValueError):  # inf, 1e308, beyond year 9999
            return datetime.max.replace(tzinfo=UTC)
    # capped before it becomes a timedelta, which overflows long before a float does
    return now + timedelta(seconds=min(max(0.0, number), 2 * MAX_PAUSE.total_seconds()))
