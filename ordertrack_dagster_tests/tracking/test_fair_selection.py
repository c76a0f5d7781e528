"""Fair selection (contract §2): an order asked without a usable answer goes behind the orders
not asked yet, keeps its `last_tracking_time` (and so stays stale for the freshness check),
and is asked again once the others had their turn."""

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from ordertrack_dagster.flows import RateBudget, get_flow
from ordertrack_dagster.orchestration.checks import find_stale
from ordertrack_dagster.tracking.selection import SelectionPolicy
from ordertrack_dagster.tracking.steps import (
    ask_courier,
    map_answers,
    select_pending,
)
from ordertrack_dagster.tracking.writer import write_statuses
from ordertrack_dagster_tests.helpers import courier_resource, seed_orders

LOG = logging.getLogger(__name__)


def _run(db, flow, env) -> set[str]:
    """One run of the flow's steps; the order ids it selected."""
    pending = select_pending(db, flow, LOG).frame
    raw = ask_courier(
        db,
        pending,
        flow,
        courier_resource(flow.key, env),
        force=False,
        run_id="test",
        log=LOG,
    ).frame
    write_statuses(db, map_answers(db, pending, raw, flow).frame, flow, "test", LOG)
    return set(pending["order_id"])


def test_unanswerable_orders_at_the_cap_do_not_starve_healthy_ones(stack, stack_env, db):
    flow = replace(get_flow("velocity"), cap=3)
    unanswerable = seed_orders(db, stack.simulator, flow.key, [None, None, None])
    healthy = seed_orders(db, stack.simulator, flow.key, ["in_transit"] * 3)
    unanswerable_ids = {o.order_id for o in unanswerable}
    healthy_ids = {o.order_id for o in healthy}

    assert _run(db, flow, stack_env) == unanswerable_ids  # first in line: never asked
    assert _run(db, flow, stack_env) == healthy_ids  # asked in vain: behind the unasked
    assert _run(db, flow, stack_env) == unanswerable_ids  # and still retried

    for order in unanswerable:
        stored = db["orders"].find_one({"_id": order.oid})
        assert stored.get("last_tracking_time") is None  # "the courier answered": never
        assert stored["ordertrack_asked_at"] is not None
    assert all(
        db["orders"].find_one({"_id": o.oid})["last_tracking_time"] is not None for o in healthy
    )
    now = datetime.now(UTC)
    stale = find_stale(db, flow, SelectionPolicy.from_env(), now, timedelta(days=1))
    assert stale.count == 3 and stale.oldest_order_id in unanswerable_ids


def test_deferred_orders_keep_their_place(stack, stack_env, db):
    # the login and one request; the window frees only after the run's time box, so the
    # second order is deferred rather than waited for
    budget = RateBudget(requests=2, window_seconds=86_400)
    flow = replace(get_flow("shiprocket"), batch_size=1, concurrency=1, default_rate_budget=budget)
    asked, deferred = seed_orders(db, stack.simulator, flow.key, ["in_transit"] * 2)
    _run(db, flow, stack_env)
    assert db["orders"].find_one({"_id": asked.oid}).get("ordertrack_asked_at") is not None
    assert db["orders"].find_one({"_id": deferred.oid}).get("ordertrack_asked_at") is None
