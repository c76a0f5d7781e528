"""Reading courier answers: JSON bodies and texts, courier times, and raw statuses mapped
through a courier's table (the pure helpers courier modules build their readers from)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from ordertrack_dagster.couriers.failures import BatchFailure
from ordertrack_dagster.records import INDIA, Interpretation, Outcome
from ordertrack_dagster.statuses import Canonical, normalise_raw_status

#: No shipment we track was booked before this: an earlier courier time is a sentinel.
BOOKING_ERA_START = datetime(2015, 1, 1, tzinfo=UTC)
#: How far ahead of our clock a courier time may be (clock drift) before it counts as wrong.
FUTURE_TOLERANCE = timedelta(hours=1)
_BEFORE_ANY_ERA = datetime.min.replace(tzinfo=UTC)


def parse_courier_time(value: Any) -> datetime | None:
    """A courier timestamp as UTC; zone-less values are India time. None when unreadable.

    A sentinel like `0001-01-01T00:00:00` has no UTC equivalent (India is ahead of UTC); it
    reads as the earliest time there is, which `implausible_time` then reports.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace(" ", "T", 1) if "T" not in value else value.strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=INDIA)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        return _BEFORE_ANY_ERA


def implausible_time(when: datetime | None, now: datetime) -> str | None:
    """Why a courier's event time cannot be believed (sentinel, far future), or None."""
    if when is None:
        return None
    if when < BOOKING_ERA_START:
        return f"courier time {when:%Y-%m-%d} is before {BOOKING_ERA_START:%Y}"
    if when > now + FUTURE_TOLERANCE:
        return f"courier time {when:%Y-%m-%d %H:%M}Z is in the future"
    return None


def first_entry(value: Any) -> dict[str, Any]:
    """`value[0]` of a list of objects (`shipment_track[0]`, `wbns[0]`); {} when there is none."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return value[0]
    return {}


def newest_activity_time(activities: Any) -> datetime | None:
    """The newest readable activity `date`, UTC (contract §6 History time of Shiprocket, Velocity).

    Couriers list activities newest first; taking the latest date does not rely on it.
    """
    if not isinstance(activities, list):
        return None
    times = [parse_courier_time(item.get("date")) for item in activities if isinstance(item, dict)]
    return max((when for when in times if when is not None), default=None)


StatusTable = Mapping[str, Canonical | None]


def read_status(
    candidates: Sequence[tuple[Any, StatusTable]], event_time: datetime | None
) -> Interpretation:
    """Map the first raw status its table knows: contract §5's "status from X, else Y".

    `courier_status` is the raw value actually used, as the courier sent it. When none maps,
    the answer is unmapped (no change, and an alert naming every raw value seen); an answer
    without any status is malformed.
    """
    present = [
        (str(raw).strip(), table)
        for raw, table in candidates
        if raw is not None and str(raw).strip()
    ]
    for raw, table in present:
        key = normalise_raw_status(raw)
        if key in table:
            status = table[key]
            return Interpretation(
                Outcome.MAPPED if status else Outcome.NO_CHANGE,
                courier_status=raw,
                status=status,
                event_time=event_time,
            )
    if not present:
        return Interpretation(Outcome.FAILED, alert="malformed answer: no status")
    return Interpretation(
        Outcome.UNMAPPED,
        courier_status=present[0][0],
        event_time=event_time,
        alert="unmapped status " + " / ".join(repr(raw) for raw, _ in present),
    )


def decode_json(response: httpx.Response) -> Any:
    """The JSON body, or a retryable failure for HTML, XML, empty or truncated bodies.

    Read as `read_json_text` reads, but from the bytes first: the common, valid body is not
    decoded to text at all; a body orjson refuses is read again as text in its charset.
    """
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        text = response.text
    try:
        return read_json_text(text)
    except ValueError:
        snippet = " ".join(text[:80].split())
        raise BatchFailure(
            f"HTTP {response.status_code} with a body that is not JSON: {snippet!r}",
            retryable=True,
            http_status=response.status_code,
        ) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_text(answer: Any) -> str:
    """One key's answer as compact JSON text, kept as the courier sent it (no ASCII escaping).

    orjson writes it an order of magnitude faster than the standard library (this runs for
    every key of every answer); integers beyond 64 bits, which only the standard library
    reads, are written by it too. Keeping each answer as read instead, to write it once when
    stored, was measured to cost more CPU per request (the garbage collector rescans every
    kept answer) and about 3.7 times the memory of its text.
    """
    try:
        return orjson.dumps(answer).decode()
    except TypeError:
        return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


def read_json_text(text: str) -> Any:
    """JSON text as couriers send it and `json_text` keeps it: strict JSON (RFC 8259), read by
    orjson several times faster than the standard library, or by the standard library when it
    takes what orjson refuses (integers beyond 64 bits). NaN and Infinity are not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text, parse_constant=_refuse_constant)
