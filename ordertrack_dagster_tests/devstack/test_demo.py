"""`make run`: progress while each flow fetches, the summary, where to look next; and the
Dagster instance it leaves for `make dev` (same working directory, same instance)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance

from ordertrack_dagster.devstack import demo
from ordertrack_dagster_tests.helpers import seed_orders

FLOW = "delhivery_b2c"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere() -> None:
    terminal, pipe = Terminal(), io.StringIO()
    for out in (terminal, pipe):
        progress = demo.FlowProgress("shiprocket", out, every=3600)
        for asked in (0, 10, 10, 20, 40):
            progress.update(asked, 40)
        progress.finish("ok in 1.0s")
    assert terminal.getvalue() == (
        f"\r  shiprocket: [{'-' * 30}] asked 0 of 40"
        f"\r  shiprocket: [{'#' * 7}{'-' * 23}] asked 10 of 40"
        f"\r  shiprocket: [{'#' * 15}{'-' * 15}] asked 20 of 40"
        f"\r  shiprocket: [{'#' * 30}] asked 40 of 40"
        "\n  shiprocket: ok in 1.0s\n"
    )
    # without a terminal (CI): the first line, then at most one per `every`, and the last
    assert pipe.getvalue().splitlines() == [
        "  shiprocket: asked 0 of 40 tracking keys",
        "  shiprocket: asked 40 of 40 tracking keys",
        "  shiprocket: ok in 1.0s",
    ]


def test_where_next_names_the_ui_the_logs_and_what_landed_in_s3(tmp_path: Path) -> None:
    text = demo.where_next(tmp_path, "bucket", {"ordertrack/status_updates": 5})
    assert "make dev" in text and "http://127.0.0.1:3000" in text
    assert str(tmp_path / "logs") in text
    assert "s3://bucket/ordertrack/status_updates/  5 objects" in text


@pytest.mark.slow
def test_make_run_shows_each_fetch_and_leaves_its_runs_for_make_dev(
    stack, stack_env, db, tmp_path: Path
) -> None:
    seeded = seed_orders(db, stack.simulator, FLOW, ["in_transit", "delivered", "lost"])
    home = demo.prepare_dagster_home(tmp_path, fresh=True)
    # as make run sets it: a fetch of three keys ends before its first hand-over, and its
    # last line still says all were asked
    env = demo.demo_env(stack_env, home)
    out = io.StringIO()  # no terminal: plain lines, as CI sees them

    assert demo.materialize_flows([FLOW], env, tmp_path, out) == []

    *progress, last = out.getvalue().splitlines()
    assert progress[-1] == f"  {FLOW}: asked {len(seeded)} of {len(seeded)} tracking keys"
    assert last.startswith(f"  {FLOW}: ok in ")
    summary = demo.format_summary(demo.read_summaries(home, [FLOW]))
    assert summary.splitlines()[1].split()[:3] == [FLOW, "3", "3"]  # selected, polled

    # `make dev` on the same working directory keeps the instance `make run` filled
    assert demo.prepare_dagster_home(tmp_path, fresh=False) == home
    with DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        assert run.tags["dagster/partition"] == FLOW
        written = instance.fetch_materializations(
            AssetRecordsFilter(AssetKey("order_status_writes"), asset_partitions=[FLOW]), limit=1
        ).records
        assert [record.run_id for record in written] == [run.run_id]
        checks = instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        assert checks, "the run's check results are not in the instance"
