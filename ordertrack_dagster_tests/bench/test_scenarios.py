"""How the benchmark prepares what its scenarios share, so that they run the same every time."""

import sqlite3
from pathlib import Path

from ordertrack_dagster.devstack.demo import prepare_dagster_home


def _tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def test_a_new_dagster_home_has_its_storage_before_any_run(tmp_path):
    """Two runs launched at once on a new home would both create these tables and one would
    die at start (`table secondary_indexes already exists`): they exist before any run."""
    home = prepare_dagster_home(tmp_path)
    storage = {
        "history/runs.db": {"runs", "run_tags", "secondary_indexes", "alembic_version"},
        "history/runs/index.db": {"event_logs", "secondary_indexes", "alembic_version"},
        "schedules/schedules.db": {"jobs", "job_ticks", "secondary_indexes", "alembic_version"},
    }
    for database, tables in storage.items():
        assert (home / database).exists(), database
        assert tables <= _tables(home / database), database
