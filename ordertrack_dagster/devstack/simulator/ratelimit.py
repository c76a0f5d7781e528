"""Rate limiting as the couriers do it: a quota of requests per client IP in a sliding
wall-clock window, shared by the APIs of one simulated courier (`CourierSim`). What a refused
request is answered with is each courier's own (`CourierApi.over_quota`)."""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from email.utils import formatdate


@dataclass(frozen=True)
class RateLimit:
    """A quota of `limit` requests per client IP in any trailing `window_s` wall-clock seconds."""

    limit: int
    window_s: float
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.limit < 0 or self.window_s <= 0:
            raise ValueError("a rate limit needs limit >= 0 and window_s > 0")


class RateWindow:
    """Sliding-window log of request times per client IP for one quota."""

    def __init__(self) -> None:
        self.hits: dict[str, deque[float]] = defaultdict(deque)
        self.max_seen = 0

    def record(self, ip: str, now: float, window_s: float) -> tuple[int, float]:
        """Count a request; return the requests in the trailing window and when one leaves."""
        hits = self.hits[ip]
        while hits and hits[0] <= now - window_s:
            hits.popleft()
        hits.append(now)
        self.max_seen = max(self.max_seen, len(hits))
        return len(hits), hits[0] + window_s - now

    def over(self, ip: str, limit: RateLimit) -> float | None:
        """Count a request (even with the limit disabled); when it is over the limit, the
        seconds until a place frees up."""
        count, frees_in = self.record(ip, time.monotonic(), limit.window_s)
        return frees_in if limit.enabled and count > limit.limit else None


def retry_after(seconds: float, fmt: str) -> str:
    """A Retry-After value in one of the forms couriers send: seconds, Unix time or HTTP date."""
    if fmt == "http_date":
        return formatdate(time.time() + seconds, usegmt=True)
    if fmt == "unix":
        return str(int(time.time() + seconds))
    return str(max(1, math.ceil(seconds)))
