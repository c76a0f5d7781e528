"""The drain scenario: when a run's budget had room again, whether a run deferred every order
although it did within its time box (pure), and who starts its runs (the product's drain
sensor, against the local servers; the schedule's ticks). Nothing is measured here."""

import time
from datetime import UTC, datetime
from itertools import pairwise

import pytest
from dagster import AssetMaterialization, instance_for_test

from ordertrack_dagster.bench.figures import DEFERRING_TARGET, deferring_target
from ordertrack_dagster.bench.scenarios import (
    BY_DRAIN_SENSOR,
    BY_SCHEDULE,
    DrainRun,
    LimitedFigures,
    budget_free_after,
    drain_sensor_starts,
    ticks_after,
)
from ordertrack_dagster.flows import RateBudget, get_flow
from ordertrack_dagster.resources.mongo import MongoResource

BUDGET = RateBudget(requests=3, window_seconds=300)
TIME_BOX = 720.0


def test_the_budget_frees_when_enough_requests_left_its_window():
    assert budget_free_after([], 1000.0, BUDGET) == 0.0
    assert budget_free_after([900.0, 950.0], 1000.0, BUDGET) == 0.0  # room for a third
    # three in the window: room once the oldest of them leaves it, at 900 + 300
    assert budget_free_after([600.0, 900.0, 950.0, 990.0], 1000.0, BUDGET) == pytest.approx(200.0)
    # five in the window: room once three of them left, at 950 + 300
    sent = [800.0, 900.0, 950.0, 960.0, 990.0]
    assert budget_free_after(sent, 1000.0, BUDGET) == pytest.approx(250.0)


def drain(*runs: DrainRun) -> LimitedFigures:
    return LimitedFigures(
        due=100_000,
        courier_limit=RateBudget(requests=750, window_seconds=300),
        client_budget=RateBudget(requests=700, window_seconds=300),
        runs=[],
        started_at=0.0,
        ended_at=1.0,
        requests=0,
        forbidden=0,
        most_in_window_courier=0,
        most_in_window_client=0,
        fetch_occupancy=0.0,
        fetch_seconds=0.0,
        polled=0,
        worst_first_ask_seconds=None,
        worst_first_write_seconds=None,
        drain_runs=list(runs),
    )


def test_a_run_deferring_everything_while_its_budget_freed_in_its_time_box_fails_the_target():
    working = DrainRun("limited-1", BY_SCHEDULE, 35_000, 1_000, TIME_BOX, 0.0)
    wasted = DrainRun("limited-2", BY_DRAIN_SENSOR, 0, 36_000, TIME_BOX, 200.0)
    target = deferring_target(drain(working, wasted))
    assert target.target == DEFERRING_TARGET
    assert not target.met and target.value == 1
    assert target.measured == "1 of 2 runs (limited-2)"
    assert target.why == "per run answered / deferred: 35,000 / 1,000, 0 / 36,000"


def test_a_run_deferring_everything_with_no_budget_within_its_time_box_meets_it():
    starved = DrainRun("limited-2", BY_SCHEDULE, 0, 36_000, TIME_BOX, TIME_BOX + 1)
    assert not starved.deferred_while_budget_freed
    target = deferring_target(
        drain(DrainRun("limited-1", BY_SCHEDULE, 36_000, 0, TIME_BOX, 0.0), starved)
    )
    assert target.met and target.value == 0
    assert "1 deferred everything, its budget free only past its time box" in target.why


def test_a_drain_without_the_runs_records_is_not_measured():
    target = deferring_target(drain())
    assert not target.met and target.value is None


def test_the_schedule_ticks_after_a_run_are_the_flows_cron():
    since = datetime(2026, 3, 2, 9, 5, 30, tzinfo=UTC).timestamp()
    ticks = ticks_after(get_flow("delhivery_b2c").cron, since)
    assert ticks[0] > since and ticks[0] - since <= 8 * 60
    assert {later - earlier for earlier, later in pairwise(ticks[:10])} <= {4 * 60.0, 8 * 60.0}


def test_the_schedule_ticks_after_now_are_the_coming_ones():
    """The drain waits for the next tick after its last run: ticks in the future count (a
    partitioning read at the current time would hold only those already past)."""
    since = time.time()
    ticks = ticks_after(get_flow("delhivery_b2c").cron, since)
    assert ticks and since < ticks[0] <= since + 8 * 60


def test_the_drain_scenario_asks_the_products_drain_sensor(stack, db):
    """The scenario starts a drain run when the sensor would: after a run that took its cap
    (the budget free), not before any run left orders due."""
    mongo = MongoResource(uri=stack.env["MONGODB_URI"], database=db.name)
    with instance_for_test() as instance:
        assert not drain_sensor_starts(instance, mongo, "delhivery_b2c")
        instance.report_runless_asset_event(
            AssetMaterialization(
                "order_status_writes", partition="delhivery_b2c", metadata={"selected": 36_000}
            )
        )
        assert drain_sensor_starts(instance, mongo, "delhivery_b2c")
        assert not drain_sensor_starts(instance, mongo, "velocity")
