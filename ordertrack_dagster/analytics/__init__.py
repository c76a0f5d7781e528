"""Analytics: reading the tracking history from S3, and the `sql/` models as assets.

What other concerns need of the analytics is imported from here; every other module of this
package is internal to it.
"""

from ordertrack_dagster.analytics.assets import HistoryResource, sql_model_assets
from ordertrack_dagster.analytics.history import (
    HistoryStore,
    read_history,
    read_raw_responses,
    read_status_updates,
    unmapped_statuses,
)

__all__ = [
    # The models' S3 history resource, which `settings.py` builds from the environment.
    "HistoryResource",
    # The tracking history in S3 and its readers, for analysts' scripts and notebooks.
    "HistoryStore",
    "read_history",
    "read_raw_responses",
    "read_status_updates",
    # One asset per `sql/` model, which `definitions.py` registers.
    "sql_model_assets",
    # The courier statuses no mapping knows, read from the history, for the same readers.
    "unmapped_statuses",
]
