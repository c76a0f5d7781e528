"""Schedules, sensors, checks and the tracking job (contract §1, §4, §8, §9)."""

from ordertrack_dagster.orchestration.checks import CHECKS
from ordertrack_dagster.orchestration.guards import FLOW_TAG
from ordertrack_dagster.orchestration.jobs import JOBS, tracking_job
from ordertrack_dagster.orchestration.schedules import SCHEDULES
from ordertrack_dagster.orchestration.sensors import SENSORS

__all__ = ["CHECKS", "FLOW_TAG", "JOBS", "SCHEDULES", "SENSORS", "tracking_job"]
