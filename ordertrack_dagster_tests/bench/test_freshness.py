"""The detection-delay model on a small population: its bookkeeping, the product code it
drives (selection sort, request budget) and the report of its targets. Nothing is timed."""

import json
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from ordertrack_dagster.bench.figures import freshness_targets, report
from ordertrack_dagster.bench.freshness import (
    BASELINE_POLICY,
    Adaptive,
    Delays,
    FreshnessFigures,
    FreshnessModel,
    LifeCycles,
    MemoryStateDocuments,
    OldestFirst,
    Population,
    sim_datetime,
    sort_key,
    tally,
)
from ordertrack_dagster.bench.freshness_e2e import ValidationScale, scan_to_write_delays
from ordertrack_dagster.bench.report import render_markdown, to_json
from ordertrack_dagster.bench.results import keep_unmeasured, results_from_json
from ordertrack_dagster.couriers.budget import SharedBudget
from ordertrack_dagster.devstack.simulator.lifecycle import SCENARIOS, Clock, Shipment, Shipments
from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.polling import ASKED_FIELD, NEXT_POLL_FIELD
from ordertrack_dagster.resources.budget_window import BudgetWindow
from ordertrack_dagster.tracking.selection import SelectionPolicy, build_query
from ordertrack_dagster_tests.bench.test_report import hand_made_results

SELECTION = SelectionPolicy(
    tracking_status_ids=(4, 5, 6, 7, 8, 9, 11, 14, 16, 51, 26, 25), buffer_days=31
)
TINY = Population(
    live={"delhivery_b2c": 120, "delhivery_b2b": 20, "delhivery_fallback": 10},
    warmup_hours=1,
    measured_hours=6,
    tail_hours=1,
)


@pytest.fixture(scope="module")
def oldest_first() -> dict:
    return FreshnessModel(OldestFirst(), TINY, SELECTION).run()


def test_the_selection_sort_orders_in_memory_as_mongodb_does():
    spec = build_query(get_flow("delhivery_b2c"), SELECTION, sim_datetime(0)).sort
    docs = [
        {"_id": 3, ASKED_FIELD: 50.0, "last_tracking_time": 50.0},
        {"_id": 2, ASKED_FIELD: None, "last_tracking_time": None},
        {"_id": 1, ASKED_FIELD: 50.0, "last_tracking_time": 10.0},
        {"_id": 4},  # never asked: the field is missing, which sorts first like null
    ]
    assert [doc["_id"] for doc in sorted(docs, key=sort_key(spec))] == [2, 4, 1, 3]
    assert [doc["_id"] for doc in sorted(docs, key=sort_key([("_id", -1)]))] == [4, 3, 2, 1]


def test_the_product_budget_on_the_model_clock_never_grants_more_than_the_limit():
    state, now = MemoryStateDocuments(), [0.0]
    flow = get_flow("delhivery_b2b")
    budget = SharedBudget(
        BudgetWindow(state, flow.budget_scope),  # type: ignore[arg-type]  # in memory
        flow.rate_budget_in({}),
        min_block=3,
        clock=lambda: now[0],
    )
    sent: list[float] = []
    while now[0] < 900:
        wait = budget.take()
        if wait is None:
            sent.append(now[0])
            now[0] += 0.05
        else:
            now[0] += wait
    budget.close()
    limit = flow.rate_budget_in({})
    most = max(sum(1 for t in sent if start - limit.window_seconds < t <= start) for start in sent)
    assert most <= limit.requests
    assert len(sent) >= 2 * limit.requests  # and it keeps granting as the window frees


def test_an_answer_counts_the_change_it_shows_and_misses_those_it_skipped():
    by_step: dict[str, Delays] = defaultdict(Delays)
    steps = ("manifested", "out_for_delivery", "delivered")
    tally(by_step, steps, (0.0, 100.0, 160.0), [1, 2], 200.0, lambda at: True)
    assert by_step["delivered"].delays == [40.0]
    assert by_step["out_for_delivery"].missed == 1 and not by_step["out_for_delivery"].delays


def test_a_change_is_what_the_courier_says_differently():
    lifecycles = LifeCycles(seed=1)
    steps = ("manifested", "picked_up", "in_transit", "reached_destination", "out_for_delivery")
    # Delhivery B2C says "In Transit" for all three middle steps; B2B names each one
    assert lifecycles.changes("delhivery_b2c", steps, 0, 4) == [1, 4]
    assert lifecycles.changes("delhivery_b2b", steps, 0, 4) == [1, 2, 3, 4]
    assert lifecycles.canonical("out_for_delivery") == "out_for_delivery"


def test_oldest_first_with_spare_budget_sees_each_change_within_one_tick(oldest_first):
    flows = {flow["flow"]: flow for flow in oldest_first["flows"]}
    assert set(flows) == set(TINY.live)
    for key in ("delhivery_b2c", "delhivery_b2b"):
        figures = flows[key]
        assert figures["all"]["detected"] > 0
        # the whole population fits one run: every order is asked every tick
        assert figures["all"]["max_s"] <= figures["interval_s"] + 60
        assert figures["all"]["missed"] == 0
        assert figures["worst_unpolled_share"] <= 0.5  # one tick of the check's three
        assert figures["requests"] > 0 and figures["runs_deferring"] == 0
    b2c = flows["delhivery_b2c"]
    assert b2c["requests"] * 50 >= b2c["all"]["detected"]  # 50 waybills a request


def test_the_targets_say_not_measured_without_an_adaptive_policy(oldest_first):
    fresh = FreshnessFigures(
        live=dict(TINY.live),
        warmup_hours=TINY.warmup_hours,
        measured_hours=TINY.measured_hours,
        tail_hours=TINY.tail_hours,
        policies=[oldest_first],
        model_seconds=1.0,
    )
    rows = freshness_targets(fresh)
    assert len(rows) == 4
    assert all(row.measured == "not measured" and not row.met for row in rows)
    assert all("oldest-first" in row.why for row in rows)
    assert [row.measured for row in freshness_targets(None)] == ["not measured"] * 4


def test_the_targets_compare_an_adaptive_policy_with_oldest_first(oldest_first):
    faster = json.loads(json.dumps(oldest_first))
    faster["policy"] = "adaptive"
    for flow in faster["flows"]:
        for summary in (flow["all"], flow["end_states"]):
            for name in ("mean_s", "p95_s"):
                if summary[name] is not None:
                    summary[name] /= 4
    fresh = FreshnessFigures(dict(TINY.live), 1, 6, 1, [oldest_first, faster], 1.0)
    delay, end_states, unpolled, missed = freshness_targets(fresh)
    assert delay.value == pytest.approx(4.0) and delay.met
    assert end_states.met and end_states.value <= 0.5
    assert unpolled.met and missed.met  # nothing missed by either


def test_the_report_shows_the_model_and_keeps_what_another_run_measured(oldest_first):
    fresh = FreshnessFigures(dict(TINY.live), 1, 6, 1, [oldest_first], 1.0)
    earlier = hand_made_results()
    only_fresh = hand_made_results(flows=[], growth=[], limited=None, freshness=fresh)
    merged = keep_unmeasured(only_fresh, earlier, {"freshness"})
    assert merged.flows == earlier.flows and merged.freshness is fresh
    # the report says it combines two runs, and gives no time for a full run
    assert merged.seconds == only_fresh.seconds
    assert "freshness" not in merged.kept.parts and "flows" in merged.kept.parts
    assert merged.kept.generated_at == earlier.generated_at
    markdown = render_markdown(report(merged), None)
    assert f"kept from earlier runs (the earliest of {earlier.generated_at})" in markdown
    assert "every figure below comes from one run" not in markdown
    assert "min here" not in markdown
    assert "## Detection delay" in markdown and "## Every flow at production scale" in markdown
    assert f"| {BASELINE_POLICY} | delhivery_b2b |" in markdown
    written = json.loads(json.dumps(to_json(report(merged)), default=str))
    again = results_from_json(written)
    assert again.freshness == merged.freshness and again.kept == merged.kept
    # measured again on top of a combined report: the oldest figures' run is the one named
    later = replace(only_fresh, generated_at="2099-01-01T00:00:00+00:00")
    assert keep_unmeasured(later, again, {"freshness"}).kept == merged.kept
    assert "every figure below comes from one run" in render_markdown(report(earlier), None)


def test_end_to_end_delays_run_from_the_scan_to_our_write_in_simulated_seconds():
    scale = ValidationScale(orders=1, runs=2, time_scale=60.0)
    start = 1_000_000.0
    iso = lambda wall: datetime.fromtimestamp(wall, UTC).isoformat()  # noqa: E731
    events = [
        {"step": "manifested", "at": iso(start - 100)},
        {"step": "picked_up", "at": iso(start + 10)},
        {"step": "in_transit", "at": iso(start + 12)},  # B2C says "In Transit" again
        {"step": "reached_destination", "at": iso(start + 30)},
    ]
    # asked at +5 (nothing new), then at +20 and written at +21
    polls = {"AWB1": [(start + 5, start + 6), (start + 20, start + 21)]}
    figures = scan_to_write_delays(scale, [start, start + 15], polls, {"AWB1": events})
    assert figures["all"]["detected"] == 1
    assert figures["all"]["mean_s"] == pytest.approx((21 - 10) * 60.0)
    assert figures["interval_s"] == pytest.approx(15 * 60.0)
    assert figures["all"]["pending"] == 0  # reached_destination says "In Transit" too


def test_adaptive_stores_the_products_next_poll_on_every_order_it_asked():
    model = FreshnessModel(Adaptive(), TINY, SELECTION)
    figures = model.run()
    asked = [
        order for orders in model.live.values() for order in orders if order.doc.get(ASKED_FIELD)
    ]
    assert asked and all(isinstance(o.doc[NEXT_POLL_FIELD], datetime) for o in asked)
    never = [order for orders in model.live.values() for order in orders if order not in asked]
    assert all(NEXT_POLL_FIELD not in order.doc for order in never)  # first in line
    assert {flow["flow"] for flow in figures["flows"]} == set(TINY.live)


def test_a_timeline_is_the_life_cycle_the_simulators_answers_show():
    clock = Clock(0.0)
    shipments = Shipments(clock, seed=3, namespaces={"delhivery_b2c": "delhivery"})
    shipments.add(
        "delhivery", Shipment("AWB1", "O1", "O1", "forward", 0.0, 0.0, SCENARIOS["forward"])
    )
    timeline = shipments.timeline("delhivery_b2c", "AWB1")
    assert [step for step, _ in timeline] == list(SCENARIOS["forward"])
    clock.advance(timeline[3][1] + 1)  # one second into its fourth step
    _, _, events = shipments.lookup("delhivery_b2c", "AWB1")
    assert [step for step, _ in events] == list(SCENARIOS["forward"][:4])
    shipments.forget("delhivery_b2c", "AWB1")
    assert not shipments.knows("delhivery_b2c", "AWB1")
