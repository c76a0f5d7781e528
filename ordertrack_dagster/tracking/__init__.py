"""The tracking concern: selection, mapping, the MongoDB write, and their assets.

What other concerns need of the tracking is imported from here; every other module of this
package is internal to it. Each name below says who needs it and why.
"""

from ordertrack_dagster.tracking.assets import TRACKING_ASSETS
from ordertrack_dagster.tracking.plan import StatusCatalogue
from ordertrack_dagster.tracking.selection import SelectionPolicy, build_query

__all__ = [
    # The tracking assets, which `definitions.py` registers.
    "TRACKING_ASSETS",
    # How selection is tuned from the environment, for the staleness check to select alike.
    "SelectionPolicy",
    # The `status` collection's ids, so the staleness check bounds each status as it is stored.
    "StatusCatalogue",
    # The due orders' query, so the staleness check counts exactly what a run would select.
    "build_query",
]
