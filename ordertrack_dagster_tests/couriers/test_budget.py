"""One request budget per courier limit (couriers/budget.py), against the simulator enforcing
the courier's real limit: shared by flows and processes, every request counted, reserved in
blocks, and a pause stored by one process honoured by the others."""

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.errors import AutoReconnect

from ordertrack_dagster.couriers.budget import SharedBudget
from ordertrack_dagster.couriers.engine import FetchOptions
from ordertrack_dagster.couriers.failures import Deferred
from ordertrack_dagster.devstack.simulator import (
    RateLimit,
    SimulatorAdmin,
    SimulatorSettings,
    running_simulator,
    simulator_env,
)
from ordertrack_dagster.flows import RateBudget
from ordertrack_dagster.records import FetchState
from ordertrack_dagster.resources.budget_window import BudgetWindow, seconds_until_free
from ordertrack_dagster.resources.mongo import COMMANDS
from ordertrack_dagster.resources.state import STATE_COLLECTION, SharedState
from ordertrack_dagster_tests.helpers import (
    courier_client,
    records_by_key,
    register_shipments,
    run_fetch,
    simulator_counts,
)

ONE_AT_A_TIME = {"batch_size": 1, "concurrency": 1}
#: The courier's limit in these tests (Delhivery's 750 per 5 minutes, scaled), and ours below it.
COURIER_LIMIT = RateLimit(limit=30, window_s=4.0)
CLIENT_BUDGET = RateBudget(requests=27, window_seconds=4.0)


@pytest.fixture
def state(db):
    return SharedState(db)


@pytest.fixture
def limited_courier():
    """A simulator of its own whose Delhivery express limit is small enough to reach."""
    defaults = SimulatorSettings()
    settings = SimulatorSettings(
        latency_mean_ms=5,
        latency_p99_ms=20,
        rate_limits={**defaults.rate_limits, "delhivery_b2c": COURIER_LIMIT},
    )
    with running_simulator(settings) as url, SimulatorAdmin(url) as admin:
        yield simulator_env(url, settings), admin


def _run_together(*runs):
    """Run fetches side by side, each on its own thread and event loop (as two processes)."""
    results = [None] * len(runs)

    def run(index, client, keys):
        results[index] = run_fetch(client, keys)

    threads = [threading.Thread(target=run, args=(i, *r)) for i, r in enumerate(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_overlapping_flows_share_one_budget_and_stay_under_the_courier_limit(db, limited_courier):
    env, courier = limited_courier
    flows = ("delhivery_b2c", "delhivery_fallback")
    keys = {flow: register_shipments(courier, flow, ["in_transit"] * 40) for flow in flows}
    runs = [
        (
            courier_client(
                flow,
                env,
                SharedState(db),  # each run its own state, as separate processes have
                flow_changes={
                    "default_rate_budget": CLIENT_BUDGET,
                    "batch_size": 1,
                    "concurrency": 3,
                    "pause_seconds": 0.0,
                },
            ),
            keys[flow],
        )
        for flow in flows
    ]
    results = _run_together(*runs)
    stats = simulator_counts(courier, "delhivery_b2c")
    assert stats["max_window_requests"] <= CLIENT_BUDGET.requests < COURIER_LIMIT.limit
    statuses = {code for flow in flows for code in simulator_counts(courier, flow)["status_codes"]}
    assert statuses == {"200"}  # no 403: the firewall never saw us over its limit
    answered = [r for result in results for r in result.records if r.state is FetchState.ANSWERED]
    assert len(answered) == 80  # both drained, waiting for the budget inside the run


def test_retries_count_against_the_budget(stack, state):
    flow = "delhivery_b2c"
    keys = register_shipments(stack.simulator, flow, ["in_transit"] * 3)
    stack.simulator.inject_fault(flow, "http_502", count=4)  # every request the budget allows
    budget = RateBudget(requests=4, window_seconds=300)
    before = simulator_counts(stack.simulator, flow)["requests"]
    client = courier_client(
        flow, stack.env, state, flow_changes={"default_rate_budget": budget, **ONE_AT_A_TIME}
    )
    result = run_fetch(client, keys)
    assert simulator_counts(stack.simulator, flow)["requests"] - before == 4
    assert state.requests_in_window("delhivery_express", budget) == 4
    deferred = [r for r in result.records if r.state is FetchState.DEFERRED]
    assert deferred and all("budget" in r.error for r in deferred)


def test_a_request_is_timed_from_when_it_went_out_not_from_its_wait_for_the_budget(stack, state):
    flow = "delhivery_b2c"
    keys = register_shipments(stack.simulator, flow, ["in_transit"] * 2)
    budget = RateBudget(requests=1, window_seconds=2)
    client = courier_client(
        flow, stack.env, state, flow_changes={"default_rate_budget": budget, **ONE_AT_A_TIME}
    )
    first, second = sorted(run_fetch(client, keys).records, key=lambda r: r.fetched_at)
    assert {first.state, second.state} == {FetchState.ANSWERED}
    waited_ms = (second.fetched_at - first.fetched_at).total_seconds() * 1000
    assert waited_ms >= 1000  # the second request waited for the first to leave the window
    # ...and that wait is neither its send time nor part of the courier's latency
    assert second.latency_ms < waited_ms - first.latency_ms


def test_logins_and_re_sends_after_401_count_against_the_budget(stack, state):
    flow = "delhivery_b2b"
    keys = register_shipments(stack.simulator, flow, ["in_transit", "delivered"])
    stack.simulator.inject_fault(flow, "token_expired")
    budget = RateBudget(requests=3, window_seconds=300)
    before = simulator_counts(stack.simulator, flow)
    client = courier_client(
        flow, stack.env, state, flow_changes={"default_rate_budget": budget, **ONE_AT_A_TIME}
    )
    result = run_fetch(client, keys)
    after = simulator_counts(stack.simulator, flow)
    # login, request (401), login again: the re-send would be the fourth
    assert after["requests"] - before["requests"] == 3
    assert after["logins"] - before["logins"] == 2
    assert {r.state for r in result.records} == {FetchState.DEFERRED}


def test_a_b2b_403_pauses_b2b(stack, state):
    flow = "delhivery_b2b"
    keys = register_shipments(stack.simulator, flow, ["in_transit", "delivered"])
    stack.simulator.inject_fault(flow, "forbidden")
    result = run_fetch(courier_client(flow, stack.env, state, flow_changes=ONE_AT_A_TIME), keys)
    assert {r.state for r in result.records} == {FetchState.DEFERRED}
    assert records_by_key(result)[keys[0]].http_status == 403
    resume_at = state.paused_until("delhivery_b2b")
    assert resume_at is not None
    assert abs(resume_at - (datetime.now(UTC) + timedelta(minutes=8))) < timedelta(seconds=5)
    assert state.paused_until("delhivery_express") is None


def test_a_pause_met_by_another_process_stops_this_run_at_its_next_reservation(stack, db):
    budget = RateBudget(requests=1000, window_seconds=3)  # leases of about a second
    keys = register_shipments(stack.simulator, "delhivery_b2c", ["in_transit"] * 40)
    other_keys = register_shipments(stack.simulator, "delhivery_fallback", ["in_transit"])
    slow = {"default_rate_budget": budget, "batch_size": 1, "concurrency": 1}
    running = courier_client(
        "delhivery_b2c", stack.env, SharedState(db), flow_changes=slow | {"pause_seconds": 0.1}
    )
    codes_before = simulator_counts(stack.simulator, "delhivery_b2c")["status_codes"]
    results = []
    thread = threading.Thread(target=lambda: results.append(run_fetch(running, keys)))
    thread.start()
    time.sleep(1.0)  # the run is under way when the fallback meets Delhivery's firewall
    stack.simulator.inject_fault("delhivery_fallback", "forbidden")
    other = courier_client("delhivery_fallback", stack.env, SharedState(db), flow_changes=slow)
    run_fetch(other, other_keys)
    thread.join()
    states = [record.state for record in results[0].records]
    assert FetchState.ANSWERED in states and FetchState.DEFERRED in states
    deferred = [r for r in results[0].records if r.state is FetchState.DEFERRED]
    assert all("paused" in r.error for r in deferred)
    # the simulator is shared by this worker's tests: count only this test's refusals
    codes = simulator_counts(stack.simulator, "delhivery_b2c")["status_codes"]
    assert codes.get("403", 0) == codes_before.get("403", 0)


def test_a_forced_run_is_not_stopped_by_the_pause_it_was_forced_past(stack, state, db):
    keys = register_shipments(stack.simulator, "delhivery_b2c", ["in_transit"] * 3)
    budget = RateBudget(requests=1000, window_seconds=3)
    resume_at = datetime.now(UTC) + timedelta(minutes=10)
    state.pause("delhivery_express", resume_at)
    state.budget_window("delhivery_express").note_pause(resume_at)
    client = courier_client(
        "delhivery_b2c",
        stack.env,
        state,
        flow_changes={"default_rate_budget": budget, **ONE_AT_A_TIME},
    )
    result = asyncio.run(client.fetch(keys, FetchOptions(ignore_stored_pause=True)))
    assert {r.state for r in result.records} == {FetchState.ANSWERED}


def test_reservations_are_blocks_few_round_trips_per_thousand_requests(db):
    budget = RateBudget(requests=5000, window_seconds=300)
    shared = SharedBudget(SharedState(db).budget_window("scope"), budget, min_block=50)
    before = COMMANDS.snapshot()
    assert all(shared.take() is None for _ in range(1000))
    shared.close()
    round_trips = COMMANDS.snapshot().since(before).commands
    assert round_trips <= 10
    assert SharedState(db).requests_in_window("scope", budget) == 1000


def test_two_processes_never_get_more_than_the_limit_together(db):
    budget = RateBudget(requests=100, window_seconds=300)
    first, second = (
        SharedBudget(SharedState(db).budget_window("scope"), budget, min_block=30) for _ in range(2)
    )
    granted = 0
    for _ in range(200):
        granted += sum(shared.take() is None for shared in (first, second))
    assert granted == 100
    first.close()
    second.close()
    assert SharedState(db).requests_in_window("scope", budget) == 100


class AnswerLost:
    """A budget collection whose next write the server applies but whose answer never comes
    back (a socket timeout, a connection dropped after the command)."""

    def __init__(self, collection):
        self._collection = collection
        self.lose_next = False

    def __getattr__(self, name):
        attribute = getattr(self._collection, name)
        if name not in ("find_one_and_update", "update_one"):
            return attribute

        def write(*args, **kwargs):
            result = attribute(*args, **kwargs)
            if self.lose_next:
                self.lose_next = False
                raise AutoReconnect("connection closed before the answer")
            return result

        return write


def test_a_settlement_whose_answer_was_lost_is_never_sent_again(db):
    budget = RateBudget(requests=200, window_seconds=300)
    later = [0.0]
    lossy = AnswerLost(db[STATE_COLLECTION])
    shared = SharedBudget(
        BudgetWindow(lossy, "budget:scope"),
        budget,
        min_block=4,
        clock=lambda: time.time() + later[0],
    )
    # blocks grow as they are used up (4, 8, 16, 32, then the largest, 50), of which 2 are sent
    sent = sum(shared.take() is None for _ in range(4 + 8 + 16 + 32 + 2))
    later[0] = 61  # that lease expired: the next request settles it and reserves a small block
    lossy.lose_next = True
    with pytest.raises(AutoReconnect):
        shared.take()
    sent += sum(shared.take() is None for _ in range(3))
    shared.close()
    # settled twice, the 48 requests of the last block that were not sent would be freed
    # twice: the count would fall below what was sent, and others could pass the limit
    assert SharedState(db).requests_in_window("scope", budget) >= sent


def test_the_wait_is_until_enough_requests_leave_the_window():
    budget = RateBudget(requests=10, window_seconds=30)
    now = 1000.0
    # 4 requests in the second 975, 6 in 990: one must leave; 975 does a window after 976
    assert seconds_until_free({975: 4, 990: 6}, budget, now) == pytest.approx(6.0)


def test_a_pause_seen_at_a_reservation_counts_no_request_it_does_not_send(stack, state):
    budget = RateBudget(requests=1000, window_seconds=3)
    client = courier_client(
        "delhivery_b2c", stack.env, state, flow_changes={"default_rate_budget": budget}
    )
    client._budget = SharedBudget(state.budget_window("delhivery_express"), budget, min_block=1)
    # another process met the firewall after this run started: the next reservation sees it
    resume_at = datetime.now(UTC) + timedelta(minutes=10)
    state.pause("delhivery_express", resume_at)
    client._budget.note_pause(resume_at)
    with pytest.raises(Deferred, match="paused"):
        asyncio.run(client._permit())
    client._budget.close()
    assert state.requests_in_window("delhivery_express", budget) == 0


def test_flows_contending_at_the_limit_reserve_in_blocks_and_both_are_served(db):
    """Two flows waiting on one limit (B2C's 50 workers, the fallback's 3 workers 5 s apart):
    the budget is used, neither starves, and a freed request does not cost a round trip."""
    budget = RateBudget(requests=70, window_seconds=30)
    clock = [1_000_000.0]
    busy, slow = (
        SharedBudget(
            SharedState(db).budget_window("scope"), budget, min_block=n, clock=lambda: clock[0]
        )
        for n in (50, 3)
    )
    flows = ((busy, 0.0), (slow, 5.0 / 3))
    ready_at = [0.0, 0.0]
    sent = [0, 0]
    while clock[0] < 1_000_000.0 + 120:  # four windows
        for index, (shared, spacing) in enumerate(flows):
            if clock[0] >= ready_at[index]:
                wait = shared.take()
                sent[index] += wait is None
                ready_at[index] = clock[0] + (spacing if wait is None else wait)
        clock[0] += 0.05
    busy.close()
    slow.close()
    assert sum(sent) >= 4 * budget.requests * 0.95
    assert sent[1] >= 0.5 * 120 / spacing  # the slow flow gets at least half of what it asks
    assert busy.round_trips <= 0.15 * sent[0]  # B2C: at most 3 per 1,000 orders
    assert SharedState(db).requests_in_window("scope", budget) == 0  # all left the window
