"""The benchmark's report on a small hand-made set of figures: what it computes (targets,
readings) and what BENCH.md and bench.json say. Nothing is measured here."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ordertrack_dagster.bench.figures import (
    FLAT_TOLERANCE,
    Step,
    latency_tail_seconds,
    marginal_cpu,
    report,
    slope,
    tracking_round_trips,
)
from ordertrack_dagster.bench.measure import PHASES, MongoFigures, RunFigures
from ordertrack_dagster.bench.report import render_markdown, to_json, write_report
from ordertrack_dagster.bench.results import (
    PART_FIELDS,
    Results,
    keep_unmeasured,
    read_results,
    results_from_json,
)
from ordertrack_dagster.bench.scenarios import (
    BY_SCHEDULE,
    SMOKE,
    DrainRun,
    HeadOfLineFigures,
    LimitedFigures,
    SharedLimitFigures,
)
from ordertrack_dagster.flows import RateBudget, get_flow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FIRST_EFFECT = PHASES["effects"][0]


def run_figures(label: str, flow: str, orders: int, **changes) -> RunFigures:
    """One run's figures: round numbers, so that what the report derives is easy to check."""
    figures = {
        "label": label,
        "flow": flow,
        "ok": True,
        "run_id": f"run-{label}",
        "orders": orders,
        "keys_asked": orders,
        "requests": 40,
        "whole_seconds": 20.0,
        "phase_seconds": {
            "selection": 1.0,
            "fetch": 2.0,
            "mapping": 0.5,
            "write": 10.0,
            "effects": 3.0,
            "other": 0.0,
            "dagster": 3.5,
        },
        "fetch_seconds": 1.5,
        "fetch_bound_seconds": 1.0,
        "cpu_seconds": 4.0,
        "peak_rss_mib": 300.0,
        "mongo": MongoFigures(
            round_trips=12,
            wait_seconds=8.0,
            per_phase={
                "selection": {"round_trips": 2, "wait_seconds": 1.0},
                "write": {"round_trips": 2, "wait_seconds": 6.0},
                "effects": {"round_trips": 8, "wait_seconds": 1.0},
            },
        ),
        "service_cpu_seconds": {"mongodb": 9.0, "simulator": 0.8},
        "others_cpu_share": 0.02,
        "assets": {
            "raw_courier_responses": {
                "fetch_cpu_seconds": 0.6,
                "rate_limited_answers": 0,
                "keys_answered": orders,
                "keys_deferred": 0,
            },
            "order_status_writes": {"orders_matched": orders, "updated": orders // 2},
            FIRST_EFFECT: {"sent": 150, "failed": 0, "rate_limited": 0},
        },
        "materialized_at": {},
        "started_at": 0.0,
        "ended_at": 20.0,
    }
    return RunFigures(**(figures | changes))


def growth_run(due: int, orders: int, cpu_seconds: float) -> RunFigures:
    return run_figures(f"growth-{due}", "delhivery_b2c", orders, cpu_seconds=cpu_seconds)


def hand_made_results(**changes) -> Results:
    limited = LimitedFigures(
        due=3000,
        courier_limit=RateBudget(requests=6, window_seconds=3),
        client_budget=RateBudget(requests=5, window_seconds=3),
        runs=[run_figures("limited-1", "delhivery_b2c", 3000, whole_seconds=100.0)],
        started_at=0.0,
        ended_at=100.0,
        requests=60,
        forbidden=0,
        most_in_window_courier=6,
        most_in_window_client=5,
        fetch_occupancy=4.6,
        fetch_seconds=40.0,
        polled=3000,
        worst_first_ask_seconds=54.0,
        worst_first_write_seconds=72.0,
        drain_runs=[DrainRun("limited-1", BY_SCHEDULE, 3000, 0, 720.0, 0.0)],
    )
    results = {
        "mode": "full",
        "scale": SMOKE,
        "latency_mean_ms": 130.0,
        "latency_p99_ms": 530.0,
        "machine": {
            "cores": 2,
            "cpu": "Test CPU",
            "memory_gib": 8.0,
            "os": "Linux",
            "python": "3.11.7",
            "packages": {"dagster": "1.13.27"},
        },
        "load_before": (0.5, 0.5, 0.5),
        "load_after": (1.0, 1.0, 1.0),
        "seconds": 3000.0,
        "flows": [
            run_figures("flows-delhivery_b2c", "delhivery_b2c", 2000),
            run_figures(
                "flows-delhivery_fallback",
                "delhivery_fallback",
                30,
                mongo=MongoFigures(
                    round_trips=40,
                    wait_seconds=1.0,
                    per_phase={"selection": {"round_trips": 3}, "write": {"round_trips": 3}},
                ),
            ),
        ],
        # CPU per 1,000 more orders: 1.0 s, then 1.2 s; the last size is held at the cap
        "growth": [
            growth_run(1000, 1000, 3.0),
            growth_run(2000, 2000, 4.0),
            growth_run(4000, 4000, 6.4),
            growth_run(8000, 4000, 7.0),
        ],
        "limited": limited,
        "generated_at": "2026-01-01T00:00:00+00:00",
    }
    return Results(**(results | changes))


def test_run_figures_per_phase_and_per_size():
    results = hand_made_results()
    assert tracking_round_trips(results.flows[0]) == 4  # selection and write, not effects
    assert marginal_cpu(results.growth) == [
        Step(1000, 2000, pytest.approx(1.0)),
        Step(2000, 4000, pytest.approx(1.2)),
    ]
    assert str(Step(1000, 2000, 1.0)) == "1.00 s from 1,000 to 2,000"
    doubled = results.growth[:2]
    assert slope(doubled, lambda run: run.cpu_seconds) == pytest.approx(0.415, abs=1e-3)
    assert slope(doubled, lambda run: 0.0) is None


def test_latency_tail_is_above_the_mean_bound_and_repeatable():
    tail = latency_tail_seconds(100, 10, 130.0, 530.0)
    assert tail > 100 / 10 * 0.130  # the last calls end one by one
    assert latency_tail_seconds(100, 10, 130.0, 530.0) == tail
    assert latency_tail_seconds(0, 10, 130.0, 530.0) == 0.0


def test_targets_carry_value_bound_ratio_and_verdict():
    targets = {t.target: t for t in report(hand_made_results()).targets}
    fetch = targets["fetch phase <= 1.25x its bound at 2,000 delhivery_b2c orders"]
    assert (fetch.value, fetch.bound, fetch.met) == (1.5, 1.25, False)
    assert fetch.ratio == pytest.approx(1.2)
    assert fetch.measured == "1.50x (1.50 s vs 1.00 s)"
    assert fetch.why.startswith("client CPU 15.00 ms per request; a client costing no CPU")
    tracking = targets[
        "<= 10 MongoDB round trips per 1,000 orders: "
        "the tracking path (selection, fetch, mapping, write)"
    ]
    assert (tracking.value, tracking.met) == (2.0, True)
    assert tracking.measured == "at most 2.0 (worst flow of 1,000 orders or more)"
    assert tracking.why == "delhivery_fallback (30 orders): 6 in all"
    whole = targets[
        "<= 10 MongoDB round trips per 1,000 orders: the whole run, side effects included"
    ]
    assert (whole.value, whole.ratio, whole.met) == (6.0, 0.6, True)
    forbidden = targets["zero HTTP 403 under the courier's limit (the drain)"]
    assert (forbidden.value, forbidden.ratio, forbidden.met) == (0, None, True)
    budget = targets[">= 90% of the rate budget used over the whole drain"]
    assert budget.value == pytest.approx(0.36) and not budget.met
    assert budget.why.startswith("92.0% while a run was fetching")
    first_ask = targets["worst wait for the first request <= 1.1x the rate bound"]
    assert first_ask.value == pytest.approx(1.5) and not first_ask.met
    assert first_ask.measured == "1.50x (54 s vs 36 s)"
    assert first_ask.why == (  # the embedded database's share: each run's waits on it
        "until written: 2.00x; the runs waited 8 s of the drain's 100 s on the embedded "
        "database's answers (its own cost per operation, partly beside the fetch's waits)"
    )
    rss = targets["peak RSS < 1 GiB for every flow at 100,000 due"]
    assert rss.met and rss.measured.startswith("at most 300 MiB")
    assert rss.why.startswith("no run had 100,000 due")
    flat = targets["CPU per 1,000 orders reported and flat as orders grow"]
    assert flat.value == pytest.approx(1.2) and flat.bound == FLAT_TOLERANCE and flat.met
    assert (
        flat.why
        == "beyond the fixed start-up: 1.00 s from 1,000 to 2,000, 1.20 s from 2,000 to 4,000"
    )


def test_readings_cite_the_figures_they_explain():
    figures = report(hand_made_results())
    assert figures.fetch.write_operations == 3000  # matched plus updated
    assert figures.fetch.write_ms_per_operation == pytest.approx(2.0)
    assert figures.fetch.floor_seconds == pytest.approx(0.8)  # the simulator's CPU, on 2 cores
    assert figures.effects.messages == 150 and figures.effects.messages_percent == 7.5
    assert [paced.run.flow for paced in figures.paced] == ["delhivery_fallback"]
    growth = figures.growth
    assert [run.label for run in growth.grown] == ["growth-1000", "growth-2000", "growth-4000"]
    (capped,) = growth.capped
    assert (capped.due, capped.uncapped.label, capped.uncapped_due) == (8000, "growth-4000", 4000)
    assert figures.limited.drain_seconds == 100.0 and figures.limited.idle_seconds == 60.0
    assert figures.limited.ask_ratio == pytest.approx(1.5)  # bound: 3000 / 50 / 5 x 3 s


def test_bench_md_is_the_template_filled_in_from_the_figures():
    markdown = render_markdown(report(hand_made_results()), "plot.png")
    lines = markdown.splitlines()
    assert [line for line in lines if line.startswith("## ")] == [
        "## Targets",
        "## Machine and settings",
        "## Every flow at production scale",
        "## Growth: delhivery_b2c",
        "## Under the courier's rate limit",
        "## Reproducing",
    ]
    assert (
        "| fetch phase <= 1.25x its bound at 2,000 delhivery_b2c orders | 1.50x (1.50 s vs "
        "1.00 s); client CPU 15.00 ms per request; a client costing no CPU would need"
    ) in markdown
    assert (
        "| peak RSS < 1 GiB for every flow at 100,000 due | at most 300 MiB "
        "(flows-delhivery_b2c) over all 7 runs; no run had 100,000 due; "
    ) in markdown
    assert "| delhivery_b2c | 2,000 | 20.0 | 3.50 | 1.00 | 2.00 | 0.50 | 10.0 | 3.00 |" in lines
    assert (
        "| 8,000 | 40 | 1.50 | 1.00 | 1.50 | 0.60 | 0.80 | 1.0 | 3.0 | 8.00 | 9.00 | 1.75 | 300 |"
        in lines
    )
    assert (
        "| 1 | schedule | 3,000 | 3,000 | 0 | 40 | 0.00 | 100.0 | 1.00 | 1.50 | 10.0 | 0 |" in lines
    )
    fallback = get_flow("delhivery_fallback")
    assert (
        f"* **delhivery_fallback** is paced, not throughput-bound: {fallback.workers} workers, "
        f"each pausing {fallback.pause_seconds:g} s between calls; 40 requests took 1.50 s "
        "against a pacing bound of 1.00 s (1.50x)."
    ) in lines
    assert "![growth](plot.png)" in lines
    assert (
        "* Load average 0.5 before and 1.0 after; processes outside the benchmark used on "
        "average 2% of the machine during the runs." in lines
    )
    assert "`make bench` (full, about 50 min here)" in markdown
    assert markdown.endswith("keeps the other measurements' figures from an earlier run.\n")


def test_bench_md_leaves_out_what_was_not_measured():
    results = hand_made_results(mode="smoke", growth=[], limited=None)
    markdown = render_markdown(report(results), None)
    assert "one run of it in smoke mode" in markdown
    assert "## Growth" not in markdown and "## Under the courier" not in markdown
    assert "![growth]" not in markdown
    assert "zero HTTP 403" not in markdown and "flat as orders grow" not in markdown


def test_bench_json_reads_back_into_the_same_figures():
    results = hand_made_results()
    written = json.loads(json.dumps(to_json(report(results)), default=str))
    fetch = written["targets"][0]
    assert fetch["measured"] == "1.50x (1.50 s vs 1.00 s)" and fetch["why"]
    assert (fetch["value"], fetch["bound"], fetch["met"]) == (1.5, 1.25, False)
    assert fetch["ratio"] == pytest.approx(1.2)
    again = results_from_json(written)
    assert json.loads(json.dumps(to_json(report(again)), default=str)) == written
    assert render_markdown(report(again), None) == render_markdown(report(results), None)


def test_report_only_renders_the_committed_bench_md_from_the_committed_bench_json(tmp_path):
    """BENCH.md must be what its bench.json renders to; after a change to the report, write
    it again with `python -m ordertrack_dagster.bench --report-only bench.json`."""
    written = write_report(read_results(PROJECT_ROOT / "bench.json"), tmp_path)
    assert [path.name for path in written] == ["BENCH.md", "bench.json", "bench_growth.png"]
    assert (tmp_path / "BENCH.md").read_text() == (PROJECT_ROOT / "BENCH.md").read_text()


def test_the_limit_targets_of_two_flows_sharing_a_limit_and_of_the_head_of_line():
    limit = RateBudget(requests=75, window_seconds=30)
    busy = run_figures(
        "shared-delhivery_b2c",
        "delhivery_b2c",
        36_000,
        mongo=MongoFigures(
            round_trips=300,
            wait_seconds=1.0,
            per_command={"findAndModify ordertrack_state": 90, "update orders": 40},
        ),
    )
    shared = SharedLimitFigures(
        courier_limit=limit,
        client_budget=RateBudget(requests=70, window_seconds=30),
        runs=[busy, run_figures("shared-delhivery_fallback", "delhivery_fallback", 100)],
        most_in_window_courier=70,
        forbidden=0,
    )
    line = HeadOfLineFigures(
        unanswerable=480, healthy=480, healthy_polled_per_run=[0, 480], runs=[]
    )
    targets = {
        t.target: t for t in report(hand_made_results(shared=shared, head_of_line=line)).targets
    }
    both = targets["zero HTTP 403 and at most the limit in any window, two flows sharing one limit"]
    assert both.met and both.measured == "0 HTTP 403; at most 70 in any 30 s (limit 75)"
    trips = targets["<= 10 MongoDB round trips per 1,000 orders while two flows share one limit"]
    assert trips.value == pytest.approx(300 / 36) and trips.met
    assert trips.why.startswith("90 of them on the courier state")
    healthy = targets["healthy orders polled within two runs behind a cap of unanswerable ones"]
    assert healthy.met and healthy.measured == "480 of 480 (per run: 0, 480)"
    late = HeadOfLineFigures(
        unanswerable=480, healthy=480, healthy_polled_per_run=[0, 0, 480], runs=[]
    )
    [late_target] = [
        t
        for t in report(hand_made_results(head_of_line=late)).targets
        if t.target.startswith("healthy orders")
    ]
    assert not late_target.met


def test_targets_of_a_scenario_whose_run_failed_are_not_measured_never_met():
    """A dead run sends nothing, so "zero HTTP 403" would hold for the wrong reason."""
    dead = run_figures("shared-delhivery_b2c", "delhivery_b2c", 0, ok=False, requests=0)
    shared = SharedLimitFigures(
        courier_limit=RateBudget(requests=75, window_seconds=30),
        client_budget=RateBudget(requests=70, window_seconds=30),
        runs=[dead, run_figures("shared-delhivery_fallback", "delhivery_fallback", 100)],
        most_in_window_courier=3,
        forbidden=0,
    )
    results = hand_made_results(shared=shared)
    results.limited.runs.append(run_figures("limited-2", "delhivery_b2c", 0, ok=False))
    figures = report(results)
    unmeasured = [t for t in figures.targets if t.failed_runs]
    assert {t.target for t in unmeasured} == {
        "zero HTTP 403 and at most the limit in any window, two flows sharing one limit",
        "<= 10 MongoDB round trips per 1,000 orders while two flows share one limit",
        "zero HTTP 403 under the courier's limit (the drain)",
        ">= 90% of the rate budget used over the whole drain",
        "worst wait for the first request <= 1.1x the rate bound",
        "no run of the drain defers everything while its budget frees within its time box",
    }
    for target in unmeasured:
        assert (target.met, target.value, target.verdict) == (False, None, "NOT MEASURED")
    markdown = render_markdown(figures, None)
    assert (
        "| zero HTTP 403 and at most the limit in any window, two flows sharing one limit "
        "| run shared-delhivery_b2c failed | **NOT MEASURED** |"
    ) in markdown.splitlines()
    assert "| run limited-2 failed | **NOT MEASURED** |" in markdown
    assert "**NOT MEASURED**: run limited-2 failed" in markdown
    assert "**403 answers" not in markdown and "**Budget used" not in markdown
    written = to_json(figures)["targets"]
    assert {t["verdict"] for t in written if t["target"] in {u.target for u in unmeasured}} == {
        "NOT MEASURED"
    }


def test_a_paced_run_whose_login_outran_its_budget_says_why_its_last_request_waited():
    """Delhivery B2B's cap equals its budget (480 per window): on a new database the run logs
    in first, a login is counted like any request, so its last request waits for the window."""
    b2b = get_flow("delhivery_b2b")
    login = {"raw_courier_responses": {"logins": 1, "keys_answered": b2b.cap}}
    logged_in, cached = (
        run_figures(
            "flows-delhivery_b2b",
            "delhivery_b2b",
            b2b.cap,
            requests=b2b.cap,
            assets=assets,
            fetch_seconds=310.0,
            fetch_bound_seconds=20.8,
        )
        for assets in (login, {})
    )
    for run, waited in ((logged_in, True), (cached, False)):
        base = hand_made_results()
        results = hand_made_results(flows=[*base.flows, run])
        (paced,) = [p for p in report(results).paced if p.run.flow == "delhivery_b2b"]
        assert paced.login_outran_budget is waited
        markdown = render_markdown(report(results), None)
        assert ("it logged in first (1 login)" in markdown) is waited
        assert ("counted against the same budget (480 per window)" in markdown) is waited


def test_the_report_says_whether_the_first_run_on_each_database_built_its_indexes():
    """A deployed database has its indexes before a backlog arrives, so the scenarios build
    them before their first run; figures kept from runs made before that still carry the
    build in their first run's selection, and the report says so."""
    built_before = "given the product's indexes before its first run"
    built_in_run = "first run on its newly seeded database built the product's indexes"
    kept_in_run = "The kept measurements come from runs made before that"
    now = render_markdown(report(hand_made_results()), None)
    assert built_before in now and built_in_run not in now and kept_in_run not in now
    earlier = hand_made_results(indexes_before_runs=False)
    assert built_in_run in render_markdown(report(earlier), None)
    written = json.loads(json.dumps(to_json(report(hand_made_results())), default=str))
    del written["settings"]["indexes_before_runs"]  # a bench.json written before the flag
    assert results_from_json(written).indexes_before_runs is False
    merged = keep_unmeasured(hand_made_results(flows=[], growth=[]), earlier, {"limited"})
    assert not merged.kept.indexes_before_runs
    markdown = render_markdown(report(merged), None)
    assert built_before in markdown and kept_in_run in markdown
    again = results_from_json(json.loads(json.dumps(to_json(report(merged)), default=str)))
    assert again.kept == merged.kept and again.indexes_before_runs
    # kept in turn: the drain measured with its indexes built, the rest measured again
    everything_else = set(PART_FIELDS) - {"limited"}
    next_keep = keep_unmeasured(hand_made_results(), again, everything_else)
    assert next_keep.kept.parts == ("limited",) and next_keep.kept.indexes_before_runs
    assert kept_in_run not in render_markdown(report(next_keep), None)


def test_the_drain_says_how_long_the_runs_before_the_last_waited_on_the_database():
    """One run at a time: the last run asks only once the runs before it have written, so
    their waits on the database are a floor under the worst first ask."""
    results = hand_made_results()
    drain = results.limited
    runs = [run_figures(f"limited-{n}", "delhivery_b2c", 1500, whole_seconds=50.0) for n in (1, 2)]
    two_runs = replace(results, limited=replace(drain, runs=runs))
    first_ask = {t.target: t for t in report(two_runs).targets}[
        "worst wait for the first request <= 1.1x the rate bound"
    ]
    assert first_ask.why.endswith(
        "; the runs before the last alone waited 8 s on it, 0.22x the bound: one run at a "
        "time, the last run asks only once they have written"
    )
