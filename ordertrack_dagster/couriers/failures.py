"""Why a batch got no usable answer: what a courier module raises and the engine decides on."""

from __future__ import annotations

from datetime import datetime


class BatchFailure(Exception):
    """A batch that cannot be answered now; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool, http_status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.http_status = http_status


class RateLimited(Exception):
    """The courier said stop: no request until `resume_at`."""

    def __init__(self, resume_at: datetime, http_status: int):
        super().__init__(f"rate limited (HTTP {http_status}) until {resume_at.isoformat()}")
        self.resume_at = resume_at
        self.http_status = http_status


class NotAnswered(Exception):
    """The courier answered the batch but knows none of its keys (an error body)."""

    def __init__(self, message: str, *, http_status: int | None = None):
        super().__init__(message)
        self.http_status = http_status


class AuthFailure(Exception):
    """Login failed; never retried in a loop (couriers lock accounts)."""
