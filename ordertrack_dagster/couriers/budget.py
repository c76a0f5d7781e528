"""One request budget per courier limit, shared by every run, flow and process (contract §4).

The counts live in the scope's stored window (`resources/budget_window.py`: one document
per budget scope, kept by the shared store), in whole-second buckets. A process does not ask
MongoDB before each request: it reserves a block of requests (a lease) with one atomic `$inc`
that returns the document as it is after the increment, so it sees every other process's
reservations at that instant and takes only what is left below the limit. Two processes
reserving at once are ordered by MongoDB, and together they never get more than the limit.

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

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ordertrack_dagster.flows import RateBudget
from ordertrack_dagster.resources.budget_window import (
    BudgetWindow,
    bucket_width,
    counted_in_window,
    seconds_until_free,
)

#: A lease lasts this share of the window at most: long enough that a slow flow (the
#: fallback's three workers, 5 s apart) reserves rarely, short enough that a pause another
#: process stored is seen soon.
LEASE_SHARE_OF_WINDOW = 0.2
#: One block takes at most this share of the limit, so one process cannot hold it all.
MAX_BLOCK_SHARE = 0.25
#: A wait read from the last reservation is waited without asking MongoDB only up to this;
#: a longer one (which could defer the rest of a run) is checked with a fresh reservation.
LOCAL_WAIT_SECONDS = 30.0


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
        window: BudgetWindow,
        budget: RateBudget | None,
        *,
        min_block: int,
        clock: Callable[[], float] = time.time,
    ):
        self._window = window
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
            self._window.add(_settled(lease), upsert=True)

    def pause_hinted(self) -> bool:
        """Whether the last reservation saw a pause that some process noted and that lasts."""
        return self._pause_hint > self._clock()

    def note_pause(self, resume_at: datetime) -> None:
        """Tell the other processes of this scope, with their next reservation."""
        self.round_trips += 1
        self._window.note_pause(resume_at)

    def _bucket(self, at: float) -> int:
        assert self.budget is not None
        width = bucket_width(self.budget)
        return int(math.floor(at / width) * width)

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
        changes: Counter[int] = Counter(
            {start: n for start, n in (_settled(old) if old else {}).items() if n}
        )
        changes[counted_at] += ask
        stale_before = now - self.budget.window_seconds - width
        stale = [start for start in self._known if start < stale_before and start not in changes]
        # the old lease is settled by this update or never: when it fails, the server may
        # still have applied it, and settling again could free what was sent. Left unsettled,
        # its whole reservation stays counted until it leaves the window (safe: too much)
        self._lease = None
        reserved = self._window.reserve(changes, stale)
        self.round_trips += 1
        self._known = reserved.buckets
        self._pause_hint = reserved.pause_hint
        over = counted_in_window(self._known, self.budget, now) - self.budget.requests
        granted = ask - max(0, over)
        if granted < enough:  # others took it first: hand it all back, wait for enough
            self._paced = True
            self.round_trips += 1
            self._window.add({counted_at: -ask}, upsert=False)
            self._known[counted_at] -= ask
            return seconds_until_free(self._known, self.budget, now, enough)
        # a grant that came back short stays reserved whole until the lease is settled (with
        # the next reservation): the others wait a little longer, no round trip is spent
        self._paced = self._paced or granted < ask
        self._lease = _Lease(counted_at, counted_at + width, granted, reserved=ask)
        return None
