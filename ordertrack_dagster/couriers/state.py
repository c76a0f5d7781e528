"""Courier state that must outlive one process: rate-limit pauses, request budgets, tokens.

Kept in MongoDB's `ordertrack_state` collection (SPEC §4), where every run on every machine
sees it. The old service kept it in memory and forgot a courier's "stop" on restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo.database import Database

from ordertrack_dagster.couriers.budget import SharedBudget, requests_counted
from ordertrack_dagster.flows import RateBudget

STATE_COLLECTION = "ordertrack_state"


@dataclass(frozen=True)
class CachedToken:
    token: str
    expires_at: datetime


def _aware(value: datetime | None) -> datetime | None:
    """pymongo returns naive UTC datetimes; make them comparable with aware ones."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class CourierState:
    """Pauses, budgets and tokens of the couriers, persisted in MongoDB."""

    def __init__(self, db: Database):
        self._collection = db[STATE_COLLECTION]

    # -- rate-limit pauses --------------------------------------------------------------

    def paused_until(self, scope: str) -> datetime | None:
        """The stored resume time, if it lies in the future."""
        doc = self._collection.find_one({"_id": f"pause:{scope}"}, {"resume_at": 1})
        resume_at = _aware(doc.get("resume_at")) if doc else None
        return resume_at if resume_at and resume_at > datetime.now(UTC) else None

    def pause(self, scope: str, resume_at: datetime, reason: str = "") -> None:
        """Store a pause; a later resume time wins over an earlier one."""
        self._collection.update_one(
            {"_id": f"pause:{scope}"},
            {
                "$max": {"resume_at": resume_at},
                "$set": {"reason": reason, "set_at": datetime.now(UTC)},
            },
            upsert=True,
        )

    def clear_pause(self, scope: str) -> None:
        self._collection.delete_one({"_id": f"pause:{scope}"})

    # -- request budgets ----------------------------------------------------------------

    def shared_budget(self, scope: str, budget: RateBudget | None, min_block: int) -> SharedBudget:
        """This process's share of a scope's budget (`budget.py` says how it is shared)."""
        return SharedBudget(self._collection, scope, budget, min_block=min_block)

    def requests_in_window(self, scope: str, budget: RateBudget) -> int:
        """Requests counted in the current window by every process (reports, the benchmark)."""
        return requests_counted(self._collection, scope, budget)

    # -- tokens -------------------------------------------------------------------------

    def cached_token(self, name: str) -> CachedToken | None:
        """A stored token that is still valid for at least a minute."""
        doc = self._collection.find_one({"_id": f"token:{name}"})
        if not doc or not doc.get("token"):
            return None
        expires_at = _aware(doc.get("expires_at"))
        if expires_at is None or (expires_at - datetime.now(UTC)).total_seconds() < 60:
            return None
        return CachedToken(doc["token"], expires_at)

    def save_token(self, name: str, token: CachedToken) -> None:
        self._collection.update_one(
            {"_id": f"token:{name}"},
            {
                "$set": {
                    "token": token.token,
                    "expires_at": token.expires_at,
                    "saved_at": datetime.now(UTC),
                }
            },
            upsert=True,
        )

    def login_blocked_until(self, name: str) -> datetime | None:
        """After a failed login no process tries again before this time (accounts lock)."""
        doc = self._collection.find_one({"_id": f"login_block:{name}"})
        until = _aware(doc.get("until")) if doc else None
        return until if until and until > datetime.now(UTC) else None

    def block_login(self, name: str, until: datetime, reason: str) -> None:
        self._collection.update_one(
            {"_id": f"login_block:{name}"},
            {"$set": {"until": until, "reason": reason}},
            upsert=True,
        )
