"""The one owner of the state shared by every run on every machine: the `ordertrack_state`
collection (contract §4) and every document in it: cached tokens (couriers' and the CRM's),
login blocks, alerts already posted, couriers' rate-limit pauses and request budgets' windows.

Each concern keeps its rules (when to pause, how to reserve requests, when to alert) and
asks this store for what is stored, so no concern imports another's implementation to read
or clear it: the schedules and the operator job read and clear pauses here, the drain sensor
reads a budget's window here. Tokens are sealed with ORDERTRACK_STATE_KEY when it is set
(`security.tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database

from ordertrack_dagster.resources.budget_window import BudgetWindow, Limit
from ordertrack_dagster.security.redaction import remember_secret
from ordertrack_dagster.security.tokens import TokenCipher

STATE_COLLECTION = "ordertrack_state"
PAUSE_PREFIX = "pause:"
#: No courier may stop us for longer: a hostile or broken Retry-After (year 9999, `1e308`)
#: becomes this, and a longer pause already stored reads as this from now.
MAX_PAUSE = timedelta(hours=1)


@dataclass(frozen=True)
class CachedToken:
    token: str
    expires_at: datetime


def aware(value: datetime | None) -> datetime | None:
    """pymongo returns naive UTC datetimes; make them comparable with aware ones."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class SharedState:
    """Tokens, login blocks, alert flags, pauses and budget windows, persisted in MongoDB for
    every process."""

    def __init__(self, db: Database, cipher: TokenCipher | None = None):
        self._collection: Collection = db[STATE_COLLECTION]
        self._cipher = cipher or TokenCipher.from_env()

    # -- tokens -------------------------------------------------------------------------

    def cached_token(self, name: str) -> CachedToken | None:
        """A stored token that is still valid for at least a minute."""
        doc = self._collection.find_one({"_id": f"token:{name}"})
        if not doc or not doc.get("token"):
            return None
        expires_at = aware(doc.get("expires_at"))
        if expires_at is None or (expires_at - datetime.now(UTC)).total_seconds() < 60:
            return None
        token = self._cipher.open(str(doc["token"]))
        if token is None:
            return None
        remember_secret(token)
        return CachedToken(token, expires_at)

    def save_token(self, name: str, token: CachedToken) -> None:
        remember_secret(token.token)
        self._collection.update_one(
            {"_id": f"token:{name}"},
            {
                "$set": {
                    "token": self._cipher.seal(token.token),
                    "expires_at": token.expires_at,
                    "saved_at": datetime.now(UTC),
                }
            },
            upsert=True,
        )

    def login_blocked_until(self, name: str) -> datetime | None:
        """After a failed login no process tries again before this time (accounts lock)."""
        doc = self._collection.find_one({"_id": f"login_block:{name}"})
        until = aware(doc.get("until")) if doc else None
        return until if until and until > datetime.now(UTC) else None

    def block_login(self, name: str, until: datetime, reason: str) -> None:
        self._collection.update_one(
            {"_id": f"login_block:{name}"},
            {"$set": {"until": until, "reason": reason}},
            upsert=True,
        )

    # -- alerts posted once -------------------------------------------------------------

    def alerted(self, name: str) -> bool:
        """Whether the condition `name` was already alerted (and has not cleared since)."""
        return self._collection.find_one({"_id": name}, {"_id": 1}) is not None

    def remember_alert(self, name: str) -> None:
        self._collection.replace_one(
            {"_id": name}, {"_id": name, "alerted_at": datetime.now(UTC)}, upsert=True
        )

    def forget_alert(self, name: str) -> None:
        """The condition cleared: alert again the next time it holds."""
        self._collection.delete_one({"_id": name})

    # -- couriers' rate-limit pauses, per budget scope ----------------------------------

    def paused_until(self, scope: str) -> datetime | None:
        """The stored resume time, if it lies in the future (at most MAX_PAUSE after it was
        set, so a pause stored before the clamp existed cannot hold a courier for years)."""
        doc = self._collection.find_one(
            {"_id": f"{PAUSE_PREFIX}{scope}"}, {"resume_at": 1, "set_at": 1}
        )
        resume_at = aware(doc.get("resume_at")) if doc else None
        if resume_at is None:
            return None
        set_at = aware(doc.get("set_at")) or datetime.now(UTC)
        resume_at = min(resume_at, set_at + MAX_PAUSE)
        return resume_at if resume_at > datetime.now(UTC) else None

    def pause(self, scope: str, resume_at: datetime, reason: str = "") -> None:
        """Store a pause of at most MAX_PAUSE; a later resume time wins over an earlier one."""
        now = datetime.now(UTC)
        self._collection.update_one(
            {"_id": f"{PAUSE_PREFIX}{scope}"},
            {
                "$max": {"resume_at": min(resume_at, now + MAX_PAUSE)},
                "$set": {"reason": reason, "set_at": now},
            },
            upsert=True,
        )

    def clear_pause(self, scope: str) -> bool:
        """Ops' way out of a pause (the `clear_courier_pause` job); True if one was stored."""
        return self._collection.delete_one({"_id": f"{PAUSE_PREFIX}{scope}"}).deleted_count > 0

    def pauses(self) -> dict[str, dict[str, Any]]:
        """Every stored pause by its scope, for the operator job's report."""
        stored = self._collection.find({"_id": {"$regex": f"^{PAUSE_PREFIX}"}})
        return {str(doc["_id"]).removeprefix(PAUSE_PREFIX): doc for doc in stored}

    # -- request budgets' windows, per budget scope -------------------------------------

    def budget_window(self, scope: str) -> BudgetWindow:
        """The scope's stored window, which the couriers' budget reserves from."""
        return BudgetWindow(self._collection, f"budget:{scope}")

    def requests_in_window(self, scope: str, limit: Limit) -> int:
        """Requests counted in the current window by every process (reports, the benchmark)."""
        return self.budget_window(scope).requests_counted(limit)

    def budget_frees_in(self, scope: str, limit: Limit, wanted: int) -> float:
        """Seconds until `wanted` requests of the scope are free (0: free now)."""
        return self.budget_window(scope).frees_in(limit, wanted)
