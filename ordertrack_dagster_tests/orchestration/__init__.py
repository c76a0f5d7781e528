"""Schedules, sensors and checks; the daemon test loads `daemon_location`."""

from pathlib import Path

#: The instance settings shipped with the project (at the repository root).
DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
