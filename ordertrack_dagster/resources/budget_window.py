"""A request budget's stored window: one document per budget scope in `ordertrack_state`
(named by the shared store, `state.py`), counting every process's requests in whole-second
buckets, with the pause hint a process that met a rate limit leaves for the others.

What the stored buckets mean (which requests still count, when enough are free) is read
here, so the couriers' budget and the drain sensor read them alike; how a process reserves
its requests is the couriers' own (`couriers/budget.py`).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pymongo import ReturnDocument
from pymongo.collection import Collection

BUCKETS_PER_WINDOW = 30


class Limit(Protocol):
    """So many requests per sliding window (`flows.RateBudget` is one)."""

    @property
    def requests(self) -> int: ...

    @property
    def window_seconds(self) -> float: ...


def bucket_width(limit: Limit) -> int:
    """Whole seconds: buckets are stored under their start second, and a fractional width
    would round that start down and let its requests leave the window early."""
    return max(1, int(limit.window_seconds // BUCKETS_PER_WINDOW))


def counted_in_window(buckets: Mapping[int, int], limit: Limit, now: float) -> int:
    """Requests that still count at `now` (future buckets of open leases included)."""
    horizon = now - limit.window_seconds
    width = bucket_width(limit)
    return sum(n for start, n in buckets.items() if start + width > horizon)


def seconds_until_free(
    buckets: Mapping[int, int], limit: Limit, now: float, wanted: int = 1
) -> float:
    """How long until at least `wanted` requests are free, reading the buckets in order."""
    width = bucket_width(limit)
    horizon = now - limit.window_seconds
    live = sorted((start, n) for start, n in buckets.items() if start + width > horizon)
    excess = sum(n for _, n in live) - limit.requests + min(wanted, limit.requests)
    for start, n in live:
        excess -= n
        if excess <= 0:
            return max(0.05, start + width - horizon)
    return 0.05


def _buckets(doc: Mapping[str, Any] | None) -> dict[int, int]:
    return {int(k): int(v) for k, v in ((doc or {}).get("buckets") or {}).items()}


def _increments(changes: Mapping[int, int]) -> dict[str, int]:
    return {f"buckets.{start}": n for start, n in changes.items() if n}


@dataclass(frozen=True)
class Reserved:
    """The window as a reservation left it: every process's buckets, and the latest pause
    hint (epoch seconds, 0 when none was noted)."""

    buckets: dict[int, int]
    pause_hint: float


class BudgetWindow:
    """One scope's stored window; each method is one MongoDB command."""

    def __init__(self, collection: Collection, doc_id: str):
        self._collection = collection
        self._id = doc_id

    def reserve(self, changes: Mapping[int, int], stale: Iterable[int]) -> Reserved:
        """Add `changes` to their buckets and drop the `stale` buckets in one atomic update,
        reading the window as it is after it (what every other process reserved too)."""
        update: dict[str, Any] = {"$inc": _increments(changes)}
        dropped = {f"buckets.{start}": "" for start in stale}
        if dropped:
            update["$unset"] = dropped
        doc = self._collection.find_one_and_update(
            {"_id": self._id}, update, upsert=True, return_document=ReturnDocument.AFTER
        )
        hint = (doc or {}).get("paused_until")
        return Reserved(_buckets(doc), calendar.timegm(hint.utctimetuple()) if hint else 0.0)

    def add(self, changes: Mapping[int, int], *, upsert: bool) -> None:
        """Add `changes` (negative: hand requests back) to their buckets."""
        self._collection.update_one(
            {"_id": self._id}, {"$inc": _increments(changes)}, upsert=upsert
        )

    def note_pause(self, resume_at: datetime) -> None:
        """Leave a pause hint the other processes read with their next reservation."""
        self._collection.update_one(
            {"_id": self._id}, {"$max": {"paused_until": resume_at}}, upsert=True
        )

    def requests_counted(self, limit: Limit) -> int:
        """Requests counted in the current window, by every process."""
        return counted_in_window(self._read(), limit, time.time())

    def frees_in(self, limit: Limit, wanted: int) -> float:
        """Seconds until `wanted` requests are free by every process's count (0: free now)."""
        buckets, now = self._read(), time.time()
        if limit.requests - counted_in_window(buckets, limit, now) >= min(wanted, limit.requests):
            return 0.0
        return seconds_until_free(buckets, limit, now, wanted)

    def _read(self) -> dict[int, int]:
        return _buckets(self._collection.find_one({"_id": self._id}))
