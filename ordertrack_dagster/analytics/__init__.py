"""Analytics: reading the tracking history from S3, and the `sql/` models as assets."""

from ordertrack_dagster.analytics.history import (
    HistoryStore,
    read_history,
    read_raw_responses,
    read_status_updates,
    unmapped_statuses,
)

__all__ = [
    "HistoryStore",
    "read_history",
    "read_raw_responses",
    "read_status_updates",
    "unmapped_statuses",
]
