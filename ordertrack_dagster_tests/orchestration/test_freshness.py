"""The freshness checks against real MongoDB data: stale, fresh, never polled, other flows."""

from datetime import UTC, datetime, timedelta

import pytest

from ordertrack_dagster.flows import FLOWS, longest_wait, schedule_interval
from ordertrack_dagster.orchestration.checks import HISTORY_CHECK, check_name, evaluate_flow
from ordertrack_dagster.polling import cadence, max_interval
from ordertrack_dagster.statuses import Canonical
from ordertrack_dagster_tests.helpers import Shipment, load_definitions, seed_orders

NOW = datetime.now(UTC).replace(microsecond=0)
B2C = FLOWS["delhivery_b2c"]
FALLBACK = FLOWS["delhivery_fallback"]


def seed(
    db,
    stack,
    flow="delhivery_b2c",
    polled_minutes_ago=None,
    booked_days_ago=2.0,
    status="booked",  # not picked up yet: the polling table allows it 2 hours
):
    fields = {}
    if polled_minutes_ago is not None:
        fields["last_tracking_time"] = NOW - timedelta(minutes=polled_minutes_ago)
    shipment = Shipment(step="in_transit", booked_days_ago=booked_days_ago)
    [order] = seed_orders(db, stack.simulator, flow, [shipment], status=status, now=NOW, **fields)
    return order


def test_no_bound_is_below_three_schedule_intervals():
    assert longest_wait(B2C) == timedelta(minutes=24)
    ofd = Canonical.OUT_FOR_DELIVERY
    assert max_interval(ofd, B2C) == cadence(ofd).longest == timedelta(minutes=30)
    assert max_interval(Canonical.IN_TRANSIT, B2C) == timedelta(hours=4)


def test_the_fallback_bound_is_what_its_budget_can_hold():
    """600 waybills per run every 2 hours ask 3,000 live waybills once each in 10 hours,
    whatever the order: no status of the fallback may be held to less."""
    every_waybill_once = 3_000 / FALLBACK.cap * schedule_interval(FALLBACK.cron)
    assert every_waybill_once == timedelta(hours=10)
    assert longest_wait(FALLBACK) == timedelta(hours=12) > every_waybill_once
    for status in (Canonical.OUT_FOR_DELIVERY, Canonical.IN_TRANSIT, Canonical.RTO, None):
        assert max_interval(status, FALLBACK) == timedelta(hours=12), status
    assert max_interval(Canonical.DELIVERED, FALLBACK) == cadence(Canonical.DELIVERED).longest


def test_the_check_follows_the_polling_table(stack, db):
    """An in-transit order may wait 4 hours when the budget binds; an order out for delivery
    only 30 minutes."""
    seed(db, stack, polled_minutes_ago=200, status=Canonical.IN_TRANSIT)
    assert evaluate_flow(db, B2C, None, NOW).passed
    late = seed(db, stack, polled_minutes_ago=45, status=Canonical.OUT_FOR_DELIVERY)
    result = evaluate_flow(db, B2C, None, NOW)
    assert not result.passed
    assert result.metadata["stale_orders"].value == 1
    assert result.metadata["oldest_order_id"].value == late.order_id
    assert result.metadata["max_age_minutes"].value["out_for_delivery"] == 30


def test_a_fallback_order_may_wait_what_the_budget_can_hold(stack, db):
    """Unpolled 7 hours (past three 2-hour schedule intervals, within the 12 hours the
    fallback's budget can hold): fresh; unpolled 13 hours: stale."""
    flow, status = "delhivery_fallback", Canonical.RTO
    seed(db, stack, flow=flow, polled_minutes_ago=7 * 60, status=status)
    assert evaluate_flow(db, FALLBACK, None, NOW).passed
    late = seed(db, stack, flow=flow, polled_minutes_ago=13 * 60, status=status)
    result = evaluate_flow(db, FALLBACK, None, NOW)
    assert not result.passed
    assert result.metadata["stale_orders"].value == 1
    assert result.metadata["oldest_order_id"].value == late.order_id
    assert result.metadata["max_age_minutes"].value["rto"] == 12 * 60


def test_fresh_orders_pass(stack, db):
    seed(db, stack, polled_minutes_ago=5)
    seed(db, stack, polled_minutes_ago=None, booked_days_ago=1 / 1440)  # booked a minute ago
    result = evaluate_flow(db, B2C, None, NOW)
    assert result.passed
    assert result.metadata["stale_orders"].value == 0


def test_stale_and_never_polled_orders_fail_naming_count_and_oldest(stack, db):
    seed(db, stack, polled_minutes_ago=5)
    seed(db, stack, polled_minutes_ago=150)
    never = seed(db, stack, polled_minutes_ago=None)
    seed(db, stack, flow="shiprocket", polled_minutes_ago=300)  # another flow's problem
    result = evaluate_flow(db, B2C, None, NOW)
    assert not result.passed
    assert result.check_name == check_name("delhivery_b2c")
    assert result.metadata["stale_orders"].value == 2
    assert result.metadata["oldest_order_id"].value == never.order_id
    assert result.metadata["oldest_last_tracking_time"].value == "never"
    assert "2 delhivery_b2c orders" in result.description


def test_a_longer_threshold_can_be_configured(stack, db):
    seed(db, stack, polled_minutes_ago=150)
    assert not evaluate_flow(db, B2C, None, NOW).passed
    assert evaluate_flow(db, B2C, timedelta(minutes=180), NOW).passed


@pytest.mark.usefixtures("stack_env")
def test_the_freshness_job_checks_every_flow(stack, db, instance):
    seed(db, stack, flow="velocity", polled_minutes_ago=150)
    job = load_definitions().resolve_job_def("tracking_freshness_job")
    result = job.execute_in_process(instance=instance)
    assert result.success  # a failed check is reported, it does not fail the run
    passed = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert passed == {check_name(flow): flow != "velocity" for flow in FLOWS} | {
        HISTORY_CHECK: True  # the job also runs the history check (test_history_check.py)
    }

    config = {"ops": {"due_orders_polled": {"config": {"max_age_minutes": 180}}}}
    relaxed = job.execute_in_process(instance=instance, run_config=config)
    evaluations = [
        e for e in relaxed.get_asset_check_evaluations() if e.check_name != HISTORY_CHECK
    ]
    assert len(evaluations) == len(FLOWS) and all(e.passed for e in evaluations)
    assert {e.asset_key.to_user_string() for e in evaluations} == {"order_status_writes"}


@pytest.mark.usefixtures("stack_env")
def test_a_failing_check_is_posted_once_per_failure(stack, db, instance):
    """FRESHNESS-ALERT-ONCE: three evaluations of one failure post one Slack alert; once the
    check passed, a new failure is posted again."""
    seed(db, stack, flow="velocity", polled_minutes_ago=150)
    job = load_definitions().resolve_job_def("tracking_freshness_job")
    label = FLOWS["velocity"].courier_label

    def alerts() -> int:
        return sum(m["text"].startswith(f":hourglass: *{label}*") for m in stack.slack_messages())

    before = alerts()
    for _ in range(3):
        job.execute_in_process(instance=instance)
    assert alerts() == before + 1
    relaxed = {"ops": {"due_orders_polled": {"config": {"max_age_minutes": 180}}}}
    job.execute_in_process(instance=instance, run_config=relaxed)  # passes: failure forgotten
    job.execute_in_process(instance=instance)
    assert alerts() == before + 2
