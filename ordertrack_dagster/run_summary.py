"""The figures of a flow run, from its `status_updates` and `order_status_writes` tables.

The write step puts them in its metadata; the email summary, `make run` and the benchmark
report them. One definition, so they always agree.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from ordertrack_dagster.tables import Action


def summary_per_status(writes: pd.DataFrame) -> dict[str, int]:
    """Orders moved into each canonical status."""
    changed = writes[writes["action"] == Action.STATUS_CHANGED.value]
    return {str(k): int(v) for k, v in sorted(Counter(changed["to_status"]).items())}


def summarise(updates: pd.DataFrame, writes: pd.DataFrame) -> dict[str, int]:
    """The per-flow figures of the run summary (make run, the email, the metadata)."""
    outcomes = Counter(updates["outcome"])
    actions = Counter(writes["action"])
    return {
        "selected": len(updates),
        "polled": sum(
            outcomes.get(o, 0) for o in ("mapped", "no_change", "unmapped", "reference_mismatch")
        ),
        "updated": actions.get(Action.STATUS_CHANGED.value, 0),
        "no_change": actions.get(Action.POLL_RECORDED.value, 0),
        "refused": actions.get(Action.REFUSED.value, 0),
        "unmapped": outcomes.get("unmapped", 0),
        "reference_mismatch": outcomes.get("reference_mismatch", 0),
        "not_found": outcomes.get("not_found", 0),
        "failed": outcomes.get("failed", 0),
        "deferred": outcomes.get("deferred", 0),
    }


def detection_delays(writes: pd.DataFrame) -> pd.DataFrame:
    """Per status change the run wrote: the status reached and its detection delay, seconds
    from the courier's time for it (its scan) to our write. Changes whose answer carried no
    usable courier time are left out (their History time is the write's own). A courier time
    after the write (a clock ahead of ours) counts as no delay."""
    changed = writes[
        (writes["action"] == Action.STATUS_CHANGED.value)
        & writes["event_time"].notna()
        & writes["written_at"].notna()
    ]
    written = pd.to_datetime(changed["written_at"], utc=True)
    scanned = pd.to_datetime(changed["event_time"], utc=True)
    seconds = (written - scanned).dt.total_seconds().clip(lower=0)
    return pd.DataFrame({"to_status": changed["to_status"], "seconds": seconds})


def _spread(seconds: pd.Series) -> dict[str, float]:
    # linear interpolation, as DuckDB's quantile_cont in sql/detection_delay.sql
    return {
        "p50_seconds": round(float(seconds.quantile(0.5)), 1),
        "p95_seconds": round(float(seconds.quantile(0.95)), 1),
        "max_seconds": round(float(seconds.max()), 1),
    }


def detection_delay_summary(writes: pd.DataFrame) -> dict[str, Any]:
    """A run's detection delay: how many changes it detected with a courier time, their delay
    (p50, p95, max seconds; absent when there were none) and the same per status reached."""
    delays = detection_delays(writes)
    summary: dict[str, Any] = {"detected_changes": len(delays)}
    if delays.empty:
        return summary
    summary |= {
        f"detection_delay_{name}": value for name, value in _spread(delays["seconds"]).items()
    }
    summary["by_status"] = {
        str(status): {"changes": len(group), **_spread(group["seconds"])}
        for status, group in sorted(delays.groupby("to_status"), key=lambda item: str(item[0]))
    }
    return summary
