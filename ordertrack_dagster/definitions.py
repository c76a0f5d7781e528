"""The code location: `dagster ... -m ordertrack_dagster.definitions` loads `defs`."""

from __future__ import annotations

import os
from collections.abc import Mapping

from dagster import Definitions, in_process_executor

from ordertrack_dagster.analytics import sql_model_assets
from ordertrack_dagster.effects import EFFECT_ASSETS
from ordertrack_dagster.orchestration import CHECKS, JOBS, SCHEDULES, SENSORS
from ordertrack_dagster.settings import build_resources
from ordertrack_dagster.tracking import TRACKING_ASSETS


def build_definitions(env: Mapping[str, str]) -> Definitions:
    """The code location with its resources configured from `env` (tests pass their own)."""
    return Definitions(
        assets=[*TRACKING_ASSETS, *EFFECT_ASSETS, *sql_model_assets()],
        asset_checks=[*CHECKS],
        jobs=[*JOBS],
        schedules=[*SCHEDULES],
        sensors=[*SENSORS],
        resources=build_resources(env),
        # The steps of a flow run one after the other; one process per run starts in a
        # fraction of the time a process per step takes, and keeps a run's MongoDB pool warm.
        executor=in_process_executor,
    )


defs = build_definitions(os.environ)
