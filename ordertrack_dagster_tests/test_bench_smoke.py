"""`make bench-smoke` once, so the benchmark cannot rot: it must produce every figure.

One run of every measurement on one embedded stack: each `dagster` run's start-up costs more
than its orders, and three groups of measurements side by side each started a stack, a
Dagster instance and the benchmark's own imports again on the same two cores. How fast
anything is, is never asserted here (the benchmark measures, tests do not).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PHASES = {"selection", "fetch", "mapping", "write", "effects", "other", "dagster"}


def assert_run_figures(run: dict) -> None:
    assert run["ok"], run["label"]
    assert run["orders"] > 0 and run["requests"] > 0
    assert set(run["phase_seconds"]) == PHASES
    assert run["whole_seconds"] > 0 and run["phase_seconds"]["fetch"] > 0
    assert run["fetch_seconds"] > 0 and run["fetch_bound_seconds"] > 0
    assert run["cpu_seconds"] > 0 and run["peak_rss_mib"] > 0
    assert run["mongo"]["round_trips"] > 0 and run["mongo"]["wait_seconds"] > 0
    assert {"selection", "write"} <= set(run["mongo"]["per_phase"])
    assert run["mongodb_round_trips_per_1000"] > 0 and run["cpu_seconds_per_1000"] > 0


def assert_flows_and_growth(figures: dict, out: Path) -> None:
    flows = {run["flow"]: run for run in figures["flows"]}
    assert set(flows) == {"delhivery_b2c", "delhivery_fallback"}
    for run in [*figures["flows"], *figures["growth"]]:
        assert_run_figures(run)
    assert figures["growth"]
    assert (out / "bench_growth.png").read_bytes().startswith(b"\x89PNG")
    cpu = figures["fetch_cpu"]  # the client's CPU for reading one answer, measured alone
    assert cpu["waybills"] == 50 and 0 < cpu["read_ms_min"] <= cpu["read_ms_median"]
    assert 0 < cpu["map_ms_min"] <= cpu["map_ms_median"]


def assert_limits(figures: dict) -> None:
    limited = figures["rate_limited"]
    for run in limited["runs"]:
        assert_run_figures(run)
    assert limited["polled"] == limited["due"] > 0
    assert limited["forbidden"] >= 0 and limited["budget_share_fetching"] > 0
    assert limited["worst_first_ask_seconds"] > 0 and limited["bound_seconds"] > 0
    drain_runs = limited["drain_runs"]  # each run's own record: who started it, what it did
    assert [run["label"] for run in drain_runs] == [run["label"] for run in limited["runs"]]
    assert drain_runs[0]["started_by"] == "schedule" and drain_runs[0]["answered"] > 0
    shared = figures["shared_limit"]
    assert {run["flow"] for run in shared["runs"]} == {"delhivery_b2c", "delhivery_fallback"}
    assert shared["forbidden"] == 0
    assert 0 < shared["most_in_window_courier"] <= shared["courier_limit"]["requests"]
    line = figures["head_of_line"]
    assert line["healthy_polled_per_run"][-1] == line["healthy"] > 0
    for run in [*shared["runs"], *line["runs"]]:
        assert_run_figures(run)


def assert_bounded_and_freshness(figures: dict) -> None:
    assert_run_figures(figures["bounded"])
    fresh = figures["freshness"]
    assert [policy["policy"] for policy in fresh["policies"]] == ["oldest-first", "adaptive"]
    for policy in fresh["policies"]:
        assert {flow["flow"] for flow in policy["flows"]} == set(fresh["live"])
        assert all(flow["requests"] > 0 for flow in policy["flows"])
    check = fresh["validation"]
    assert check["end_to_end"]["ok"] and check["end_to_end"]["runs"] == 2
    assert check["model"]["detected"] >= 0


#: The report's sections the measurements fill.
SECTIONS = (
    "## Targets",
    "## Every flow",
    "## Growth",
    "## Under the courier",
    "## Budget",
    "## Detection delay",
)


@pytest.mark.slow
def test_bench_smoke_produces_every_figure(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "ordertrack_dagster.bench", "--smoke",
         "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    figures = json.loads((out / "bench.json").read_text())
    assert figures["mode"] == "smoke"
    assert figures["machine"]["cores"] and figures["machine"]["packages"]["dagster"]
    assert figures["targets"] and all("met" in target for target in figures["targets"])
    assert_flows_and_growth(figures, out)
    assert_limits(figures)
    assert_bounded_and_freshness(figures)
    report = (out / "BENCH.md").read_text()
    for section in SECTIONS:
        assert section in report
