"""One request budget per courier limit, shared by every run, flow and process (contract §4).

The counts live in one `ordertrack_state` document per budget scope (`budget:<scope>`), in
whole-second buckets. A process does not ask MongoDB before each request: it reserves a
block of requests (a lease) with one atomic `$inc` that returns the document as it is after
the increment, so it sees every other process's reservations at that instant and takes only
what is left below the limit. Two processes reserving at once are ordered by MongoDB, and
together they never get more than the limit.

A lease is counted in the bucket where it ends, so a request sent any time during the lease
stays in the window at least as long as the courier keeps counting it. The next reservation
settles the previous lease in the same update: the block comes off its bucket and the
requests actually sent go into the buckets of the seconds they were sent in, so an unused
part of a block returns to everyone.

Under contention (two flows waiting on one limit) a process does not take requests one by
one as they leave the window, which would cost a round trip each: it waits, by what it last
read and without asking MongoDB, until at least half a block is free, asks for what it saw
free, and hands a reservation back only when it got less than half a block. Once it met the
limit it paces its requests at the limit's own rate, so a busy flow does not take all a
window frees the instant it frees it and a slow flow sharing the limit is served too.

The document also carries a pause hint (`paused_until`): a process that meets a rate limit
writes it, and the others read it with their next reservation, at no extra round trip.
"""

from __future__ import annotations

import calendar
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection

from ordertrack_dagster.flows import RateBudget

BUCKETS_PER_WINDOW = 30
#: A lease lasts this share of the window at most: long enough that a slow flow (the
#: fallback's three workers, 5 s apart) reserves rarely, short enough that a pause another
#: process stored is seen soon.
LEASE_SHARE_OF_WINDOW = 0.2
#: One block takes at most this share of the limit, so one process cannot hold it all.
MAX_BLOCK_SHARE = 0.25
#: A wait read from the last reservation is waited without asking MongoDB only up to this;
#: a longer one (which could defer the rest of a run) is checked with a fresh reservation.
LOCAL_WAIT_SECONDS = 30.0


def bucket_width(budget: RateBudget) -> int:
    """Whole seconds: buckets are stored under their start second, and a fractional width
    would round that start down and let its requests leave the window early."""
    return max(1, int(budget.window_seconds // BUCKETS_PER_WINDOW))


def counted_in_window(buckets: Mapping[int, int], budget: RateBudget, now: float) -> int:
    """Requests that still count at `now` (future buckets of open leases included)."""
    horizon = now - budget.window_seconds
    width = bucket_width(budget)
    return sum(n for start, n in buckets.items() if start + width > horizon)


def seconds_until_free(
    buckets: Mapping[int, int], budget: RateBudget, now: float, wanted: int = 1
) -> float:
    """How long until at least `wanted` requests are free, reading the buckets in order."""
    width = bucket_width(budget)
    horizon = now - budget.window_seconds
    live = sorted((start, n) for start, n in buckets.items() if start + width > horizon)
    excess = sum(n for _, n in live) - budget.requests + min(wanted, budget.requests)
    for start, n in live:
        excess -= n
        if excess <= 0:
            return max(0.05, start + width - horizon)
    return 0.05


def _buckets(doc: Mapping[str, Any] | None) -> dict[int, int]:
    return {int(k): int(v) for k, v in ((doc or {}).get("buckets") or {}).items()}


@dataclass
class _Lease:
    counted_at: int  # the bucket the block is counted in (where the lease ends)
    expires: float  # epoch seconds: the end of that bucket
    granted: int
    reserved: int  # counted in the document: the grant, plus what came back short
    sent: Counter[int] = field(default_factory=Counter)  # bucket -> requests sent

    @property
    def left(self) -> int:
        return self.granted - sum(self.sent.values())


def _settled(lease: _Lease) -> Counter[int]:
    """Per bucket, what settling the lease changes: its block off, what was sent on."""
    changes: Counter[int] = Counter(lease.sent)
    changes[lease.counted_at] -= lease.reserved
    return changes


class SharedBudget:
    """This process's view of one budget scope: reserves in blocks, counts every request."""

    def __init__(
        self,
        collection: Collection,
        scope: str,
        budget: RateBudget | None,
        *,
        min_block: int,
        clock: Callable[[], float] = time.time,
    ):
        self._collection = collection
        self._id = f"budget:{scope}"
        self.budget = budget
        self._clock = clock
        self._min_block = max(1, min_block)
        self._max_block = max(1, int(budget.requests * MAX_BLOCK_SHARE)) if budget else 1
        self._block = min(self._min_block, self._max_block)
        self._lease: _Lease | None = None
        self._known: dict[int, int] = {}
        self._pause_hint = 0.0  # epoch seconds of the latest pause another process noted
        #: Once the limit was met, requests are paced at the limit's own rate (a burst of half
        #: a block allowed): a busy flow that sent a whole window's budget in its first second
        #: would take every request the window frees at once, before a slower flow sharing the
        #: limit wakes up, and so on every window.
        self._paced = False
        self._spacing = budget.window_seconds / budget.requests if budget else 0.0
        self._burst_seconds = self._spacing * max(1, self._block // 2)
        self._next_send = 0.0
        self.round_trips = 0  # every command this view sent MongoDB

    def take(self) -> float | None:
        """Count one request; None when it may be sent now, else seconds to wait first
        (0 when the reservation just brought a pause hint, which the caller checks first)."""
        if self.budget is None:
            return None
        now = self._clock()
        if self._paced and now < self._next_send:
            return self._next_send - now
        lease = self._lease
        if self._lease_spent(now):
            wait = self._renew(now)
            if wait is not None:
                return wait
            if self.pause_hinted():
                return 0.0  # not counted: the caller heeds the pause before asking again
            lease = self._lease
        assert lease is not None
        lease.sent[self._bucket(now)] += 1
        self._next_send = max(self._next_send, now - self._burst_seconds) + self._spacing
        return None

    def needs_round_trip(self) -> bool:
        """Whether `take` may ask MongoDB now (a new block to reserve): a caller on an event
        loop then runs it in a thread, so the loop goes on reading answers meanwhile."""
        if self.budget is None:
            return False
        now = self._clock()
        return not (self._paced and now < self._next_send) and self._lease_spent(now)

    def _lease_spent(self, now: float) -> bool:
        lease = self._lease
        return lease is None or lease.left <= 0 or now >= lease.expires

    def close(self) -> None:
        """Settle the open lease: what was not sent is free for everyone again."""
        lease, self._lease = self._lease, None  # settled at most once, even if this fails
        if lease is not None:
            self.round_trips += 1
            self._collection.update_one(
                {"_id": self._id}, {"$inc": self._settlement(lease)}, upsert=True
            )

    def pause_hinted(self) -> bool:
        """Whether the last reservation saw a pause that some process noted and that lasts."""
        return self._pause_hint > self._clock()

    def note_pause(self, resume_at: datetime) -> None:
        """Tell the other processes of this scope, with their next reservation."""
        self.round_trips += 1
        self._collection.update_one(
            {"_id": self._id}, {"$max": {"paused_until": resume_at}}, upsert=True
        )

    def _bucket(self, at: float) -> int:
        assert self.budget is not None
        width = bucket_width(self.budget)
        return int(math.floor(at / width) * width)

    def _settlement(self, lease: _Lease) -> dict[str, int]:
        """The lease's settlement as `$inc` fields."""
        return {f"buckets.{start}": n for start, n in _settled(lease).items() if n}

    def _renew(self, now: float) -> float | None:
        """Settle the old lease and reserve the next block in one atomic update; or, when
        the last read already shows too little free, say how long to wait without asking."""
        assert self.budget is not None
        old = self._lease
        if old is not None:  # a block used up before it expired asks for a bigger one
            used = old.granted - old.left
            self._block = min(self._max_block, max(self._min_block, 2 * used))
        enough = max(1, min(self._block, self._min_block) // 2)
        known = Counter(self._known)
        known.update(_settled(old) if old else {})
        free = self.budget.requests - counted_in_window(known, self.budget, now)
        if free < enough and (old is None or old.left <= 0):  # nothing of ours to hand back
            wait = seconds_until_free(known, self.budget, now, enough)
            if wait <= LOCAL_WAIT_SECONDS:
                self._paced = True
                return wait
            # a long wait is not taken on an old read: others may have handed blocks back
        # ask for what the last read says is free: a bigger block would come back short and
        # hold what it could not use until the next reservation
        ask = min(self._block, max(enough, free))
        width = bucket_width(self.budget)
        lease_seconds = max(width, self.budget.window_seconds * LEASE_SHARE_OF_WINDOW)
        counted_at = self._bucket(now + lease_seconds - width)
        increments: Counter[str] = Counter(self._settlement(old) if old else {})
        increments[f"buckets.{counted_at}"] += ask
        stale_before = now - self.budget.window_seconds - width
        stale = {
            f"buckets.{start}": ""
            for start in self._known
            if start < stale_before and f"buckets.{start}" not in increments
        }
        update: dict[str, Any] = {"$inc": {k: n for k, n in increments.items() if n}}
        if stale:
            update["$unset"] = stale
        # the old lease is settled by this update or never: when it fails, the server may
        # still have applied it, and settling again could free what was sent. Left unsettled,
        # its whole reservation stays counted until it leaves the window (safe: too much)
        self._lease = None
        doc = self._collection.find_one_and_update(
            {"_id": self._id}, update, upsert=True, return_document=ReturnDocument.AFTER
        )
        self.round_trips += 1
        self._known = _buckets(doc)
        hint = (doc or {}).get("paused_until")
        self._pause_hint = calendar.timegm(hint.utctimetuple()) if hint else 0.0
        over = counted_in_window(self._known, self.budget, now) - self.budget.requests
        granted = ask - max(0, over)
        if granted < enough:  # others took it first: hand it all back, wait for enough
            self._paced = True
            self.round_trips += 1
            self._collection.update_one(
                {"_id": self._id}, {"$inc": {f"buckets.{counted_at}": -ask}}
            )
            self._known[counted_at] -= ask
            return seconds_until_free(self._known, self.budget, now, enough)
        # a grant that came back short stays reserved whole until the lease is settled (with
        # the next reservation): the others wait a little longer, no round trip is spent
        self._paced = self._paced or granted < ask
        self._lease = _Lease(counted_at, counted_at + width, granted, reserved=ask)
        return None


def requests_counted(collection: Collection, scope: str, budget: RateBudget) -> int:
    """Requests counted in the scope's current window, by every process (reports, tests)."""
    doc = collection.find_one({"_id": f"budget:{scope}"})
    return counted_in_window(_buckets(doc), budget, time.time())


def seconds_until_room(
    collection: Collection, scope: str, budget: RateBudget, wanted: int
) -> float:
    """How long until `wanted` requests of the scope are free by every process's count (0 when
    they are now): when a run launched for the scope would find requests to send."""
    doc = collection.find_one({"_id": f"budget:{scope}"})
    buckets, now = _buckets(doc), time.time()
    if budget.requests - counted_in_window(buckets, budget, now) >= min(wanted, budget.requests):
        return 0.0
    return seconds_until_free(buckets, budget, now, wanted)
