"""The token discipline the three login couriers share (couriers/login.py), against the
simulator: reuse across runs, one refresh on 401, no login storm, and failed logins that are
never retried in a loop. Courier-only rules live in each courier's test file."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from ordertrack_dagster.records import FetchState
from ordertrack_dagster.resources.state import CachedToken, SharedState
from ordertrack_dagster_tests.helpers import (
    courier_client,
    records_by_key,
    register_shipments,
    run_fetch,
    simulator_counts,
)

LOGIN_FLOWS = ["delhivery_b2b", "shiprocket", "velocity"]
#: the resource field holding the account name
#: one key per request, so that workers can collide
SPREAD = {"batch_size": 1, "concurrency": 4}


@pytest.fixture
def state(db):
    return SharedState(db)


def logins(stack, flow):
    counts = simulator_counts(stack.simulator, flow)
    return counts["logins"], counts["failed_logins"]


@pytest.mark.parametrize("flow", LOGIN_FLOWS)
def test_the_token_is_cached_and_reused_by_the_next_run(stack, state, flow):
    keys = register_shipments(stack.simulator, flow, ["in_transit", "delivered"])
    before, _ = logins(stack, flow)
    first_client = courier_client(flow, stack.env, state)
    first = run_fetch(first_client, keys)
    second = run_fetch(courier_client(flow, stack.env, state), keys)
    assert {r.state for r in first.records + second.records} == {FetchState.ANSWERED}
    assert (first.stats.logins, second.stats.logins) == (1, 0)
    assert logins(stack, flow)[0] == before + 1
    token = state.cached_token(first_client.token_key)
    assert token is not None
    # the token is a secret: it never lands in what the run keeps
    kept = " ".join(f"{r.raw} {r.error}" for r in first.records + second.records)
    assert token.token not in kept


@pytest.mark.parametrize("flow", LOGIN_FLOWS)
def test_a_401_logs_in_again_and_retries_the_batch_once(stack, state, flow):
    keys = register_shipments(stack.simulator, flow, ["in_transit"])
    run_fetch(courier_client(flow, stack.env, state), keys)  # caches a token
    before, _ = logins(stack, flow)
    stack.simulator.inject_fault(flow, "token_expired")
    result = run_fetch(courier_client(flow, stack.env, state), keys)
    record = records_by_key(result)[keys[0]]
    assert (record.state, record.attempts) == (FetchState.ANSWERED, 1)
    assert result.stats.logins == 1
    assert logins(stack, flow)[0] == before + 1


@pytest.mark.parametrize("flow", LOGIN_FLOWS)
def test_many_workers_rejected_at_once_log_in_once(stack, state, flow):
    keys = register_shipments(stack.simulator, flow, ["in_transit"] * 4)
    client = courier_client(flow, stack.env, state, flow_changes=SPREAD)
    expired = CachedToken("no-longer-valid", datetime.now(UTC) + timedelta(hours=1))
    state.save_token(client.token_key, expired)
    before, _ = logins(stack, flow)
    result = run_fetch(client, keys)
    assert {record.state for record in result.records} == {FetchState.ANSWERED}
    assert result.stats.logins == 1
    assert logins(stack, flow)[0] == before + 1
    assert state.cached_token(client.token_key).token != expired.token


@pytest.mark.parametrize("flow", LOGIN_FLOWS)
def test_a_refused_login_is_not_retried_and_blocks_later_runs(stack, state, flow):
    keys = register_shipments(stack.simulator, flow, ["in_transit"] * 3)
    # another account than the simulator's, so no real account gets locked
    wrong = {"username": f"nobody-{uuid.uuid4().hex[:8]}", "password": "wrong"}
    before, failed_before = logins(stack, flow)
    client = courier_client(flow, stack.env, state, flow_changes=SPREAD, **wrong)
    result = run_fetch(client, keys)
    assert {record.state for record in result.records} == {FetchState.FAILED}
    assert all(record.error.startswith("login failed: login refused") for record in result.records)
    # no request of theirs went out: no courier latency to report
    assert all(record.latency_ms is None for record in result.records)
    assert result.stats.logins == 1
    assert logins(stack, flow) == (before + 1, failed_before + 1)
    blocked_until = state.login_blocked_until(client.token_key)
    assert blocked_until is not None
    expected = datetime.now(UTC) + timedelta(seconds=client.login_block_seconds)
    assert abs(blocked_until - expected) < timedelta(seconds=5)

    later = run_fetch(courier_client(flow, stack.env, state, **wrong), keys)
    assert {record.state for record in later.records} == {FetchState.FAILED}
    assert "blocked until" in later.records[0].error
    assert later.stats.logins == 0
    assert logins(stack, flow) == (before + 1, failed_before + 1)


@pytest.mark.parametrize("flow", LOGIN_FLOWS)
def test_a_login_server_error_fails_the_run_without_blocking_logins(stack, state, flow):
    keys = register_shipments(stack.simulator, flow, ["in_transit"] * 2)
    stack.simulator.inject_fault(flow, "http_503", endpoint="login")
    client = courier_client(flow, stack.env, state, flow_changes=SPREAD)
    result = run_fetch(client, keys)
    assert {record.error for record in result.records} == {"login failed: login answered HTTP 503"}
    assert result.stats.logins == 1
    assert state.login_blocked_until(client.token_key) is None
    again = run_fetch(courier_client(flow, stack.env, state), keys)
    assert {record.state for record in again.records} == {FetchState.ANSWERED}


@pytest.mark.parametrize("flow", LOGIN_FLOWS)
def test_a_rate_limited_login_pauses_the_courier(stack, state, flow):
    keys = register_shipments(stack.simulator, flow, ["in_transit"] * 3)
    stack.simulator.inject_fault(flow, "rate_limited", endpoint="login", retry_after=300)
    client = courier_client(flow, stack.env, state, flow_changes=SPREAD)
    result = run_fetch(client, keys)
    assert {record.state for record in result.records} == {FetchState.DEFERRED}
    assert result.stats.logins == 1  # the waiting workers did not try their own login
    assert state.paused_until(client.flow.budget_scope) is not None
