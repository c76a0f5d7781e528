"""The one owner of the state shared by every run on every machine: the `ordertrack_state`
collection (contract §4) and what any concern keeps in it that is not its own rule:
cached tokens (couriers' and the CRM's), login blocks, and alerts already posted.

What is the couriers' own (rate-limit pauses and request budgets) is kept in the same
collection by `couriers/state.py`, which builds on this store. Tokens are sealed with
ORDERTRACK_STATE_KEY when it is set (`security.tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo.collection import Collection
from pymongo.database import Database

from ordertrack_dagster.security.redaction import remember_secret
from ordertrack_dagster.security.tokens import TokenCipher

STATE_COLLECTION = "ordertrack_state"


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
    """Tokens, login blocks and alert flags, persisted in MongoDB for every process."""

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
