"""Courier state that must outlive one process: rate-limit pauses and request budgets, on top
of the shared store's tokens and login blocks (`resources/state.py`).

Kept in MongoDB's `ordertrack_state` collection (contract §4), where every run on every machine
sees it. The old service kept it in memory and forgot a courier's "stop" on restart.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ordertrack_dagster.couriers.budget import (
    SharedBudget,
    requests_counted,
    seconds_until_room,
)
from ordertrack_dagster.flows import RateBudget
from ordertrack_dagster.resources.state import (
    STATE_COLLECTION,
    CachedToken,
    SharedState,
    aware,
)

__all__ = ["MAX_PAUSE", "STATE_COLLECTION", "CachedToken", "CourierState"]

#: No courier may stop us for longer: a hostile or broken Retry-After (year 9999, `1e308`)
#: becomes this, and a longer pause already stored reads as this from now.
MAX_PAUSE = timedelta(hours=1)


class CourierState(SharedState):
    """Pauses and budgets of the couriers (and, from the shared store, their tokens)."""

    # -- rate-limit pauses --------------------------------------------------------------

    def paused_until(self, scope: str) -> datetime | None:
        """The stored resume time, if it lies in the future (at most MAX_PAUSE after it was
        set, so a pause stored before the clamp existed cannot hold a courier for years)."""
        doc = self._collection.find_one({"_id": f"pause:{scope}"}, {"resume_at": 1, "set_at": 1})
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
            {"_id": f"pause:{scope}"},
            {
                "$max": {"resume_at": min(resume_at, now + MAX_PAUSE)},
                "$set": {"reason": reason, "set_at": now},
            },
            upsert=True,
        )

    def clear_pause(self, scope: str) -> bool:
        """Ops' way out of a pause (the `clear_courier_pause` job); True if one was stored."""
        return self._collection.delete_one({"_id": f"pause:{scope}"}).deleted_count > 0

    def pauses(self) -> list[dict]:
        """Every stored pause, for the operator job's report."""
        return list(self._collection.find({"_id": {"$regex": "^pause:"}}))

    # -- request budgets ----------------------------------------------------------------

    def shared_budget(self, scope: str, budget: RateBudget | None, min_block: int) -> SharedBudget:
        """This process's share of a scope's budget (`budget.py` says how it is shared)."""
        return SharedBudget(self._collection, scope, budget, min_block=min_block)

    def requests_in_window(self, scope: str, budget: RateBudget) -> int:
        """Requests counted in the current window by every process (reports, the benchmark)."""
        return requests_counted(self._collection, scope, budget)

    def budget_frees_in(self, scope: str, budget: RateBudget, wanted: int) -> float:
        """Seconds until `wanted` requests of the scope are free (0: free now)."""
        return seconds_until_room(self._collection, scope, budget, wanted)
