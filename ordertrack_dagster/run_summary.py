"""The figures of a flow run, from its `status_updates` and `order_status_writes` tables.

The write step puts them in its metadata; the email summary, `make run` and the benchmark
report them. One definition, so they always agree.
"""

from __future__ import annotations

from collections import Counter

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
