"""Delhivery B2B (LTL): the legacy table, the answer shapes (cancelled, not found with HTTP
404 or 200), and its login rule of at most one token refresh per 30 s."""

from datetime import UTC, datetime

import httpx
import pytest

from ordertrack_dagster.couriers.delhivery_b2b import DelhiveryB2BClient, interpret
from ordertrack_dagster.couriers.failures import NotAnswered
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.records import FetchState, OrderContext, Outcome
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.statuses import Canonical as C
from ordertrack_dagster_tests.couriers.test_delhivery import LEGACY_CASES
from ordertrack_dagster_tests.fixtures import sample
from ordertrack_dagster_tests.helpers import (
    courier_client,
    records_by_key,
    register_shipments,
    run_fetch,
    simulator_counts,
)

FLOW = "delhivery_b2b"
NOW = datetime(2024, 9, 22, 6, 0, tzinfo=UTC)
ORDER = OrderContext(order_id="SHP-100231", tracking_key="220110457")


def answer(status=None, wbn_status=None, scanned="2024-09-21T08:14:55"):
    wbn = {"wbn": "8100231120013", "status": wbn_status, "scan_timestamp": scanned}
    return {"success": True, "data": {"lrnum": "220110457", "status": status, "wbns": [wbn]}}


def offline_client() -> DelhiveryB2BClient:
    return DelhiveryB2BClient(FLOWS[FLOW], None, "http://b2b.test", "user", "secret")


@pytest.mark.parametrize("raw, canonical", LEGACY_CASES)
def test_every_legacy_row_maps_data_status(raw, canonical):
    as_sent = raw.replace("_", " ").title()
    reading = interpret(answer(status=as_sent), ORDER, NOW)
    assert reading.status == canonical
    assert reading.outcome == (Outcome.MAPPED if canonical else Outcome.NO_CHANGE)
    assert reading.courier_status == as_sent  # the raw string as sent


@pytest.mark.parametrize("raw, canonical", LEGACY_CASES)
def test_without_data_status_the_first_piece_status_is_used(raw, canonical):
    reading = interpret(answer(status=None, wbn_status=raw), ORDER, NOW)
    assert reading.status == canonical
    assert reading.courier_status == raw


def test_data_status_wins_over_the_pieces():
    reading = interpret(answer(status="DELIVERED", wbn_status="IN_TRANSIT"), ORDER, NOW)
    assert reading.status == C.DELIVERED


def test_the_time_is_the_first_piece_scan_in_india_time():
    reading = interpret(answer(status="OFD"), ORDER, NOW)
    assert reading.event_time == datetime(2024, 9, 21, 2, 44, 55, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "For LR 220110499, Shipment has been cancelled by the client.",
        "LR CANCELED",
    ],
)
def test_a_data_string_saying_cancelled_is_booking_cancelled(text):
    reading = interpret({"success": True, "data": text}, ORDER, NOW)
    assert (reading.outcome, reading.status) == (Outcome.MAPPED, C.BOOKING_CANCELLED)
    assert reading.courier_status == text


def test_another_data_string_is_unmapped():
    reading = interpret({"success": True, "data": "Under review"}, ORDER, NOW)
    assert reading.outcome == Outcome.UNMAPPED and "Under review" in reading.alert


def test_an_unknown_status_is_unmapped_with_an_alert():
    reading = interpret(answer(status="MISROUTED"), ORDER, NOW)
    assert (reading.outcome, reading.courier_status) == (Outcome.UNMAPPED, "MISROUTED")
    assert "MISROUTED" in reading.alert


@pytest.mark.parametrize(
    "bad", [None, {}, {"data": None}, {"data": [1]}, answer(status=None, wbn_status=None)]
)
def test_malformed_answers_fail(bad):
    assert interpret(bad, ORDER, NOW).outcome == Outcome.FAILED


def test_realistic_samples():
    client = offline_client()
    tracked = client.split_answer(["220110457"], sample("delhivery_b2b_track"))["220110457"]
    reading = interpret(tracked, ORDER, NOW)
    assert (reading.status, reading.courier_status) == (C.IN_TRANSIT, "REACH_DESTINATION")
    assert reading.event_time == datetime(2024, 9, 21, 2, 44, 55, tzinfo=UTC)
    cancelled = client.split_answer(["220110499"], sample("delhivery_b2b_cancelled"))
    assert interpret(cancelled["220110499"], ORDER, NOW).status == C.BOOKING_CANCELLED


@pytest.mark.parametrize("http_status", [404, 200])
def test_not_found_comes_with_http_404_or_200(http_status):
    response = httpx.Response(http_status, json=sample("delhivery_b2b_not_found"))
    with pytest.raises(NotAnswered, match="Data not found") as raised:
        offline_client().read_answer(response, ["220110000"])
    assert raised.value.http_status == http_status


def test_asks_one_lr_with_a_bearer_token():
    client = offline_client()
    request = client.build_request(["220110457"])
    assert (request.method, request.url) == ("GET", "http://b2b.test/lrn/track")
    assert request.params == {"lrnum": "220110457"}
    assert client.token_headers("jwt") == {"Authorization": "Bearer jwt"}


# -- against the simulator ----------------------------------------------------------------


@pytest.fixture
def state(db):
    return SharedState(db)


@pytest.fixture
def not_found_share(stack):
    """Set how often the simulator answers an unknown LR with HTTP 200 (else 404)."""

    def set_share(share: float) -> None:
        stack.simulator.update_settings(
            couriers={"delhivery_b2b": {"not_found_http_200_share": share}}
        )

    previous = stack.simulator.settings()["couriers"]["delhivery_b2b"]["not_found_http_200_share"]
    yield set_share
    set_share(previous)


@pytest.mark.parametrize("share, http_status", [(0.0, 404), (1.0, 200)])
def test_an_unknown_lr_is_not_answered_either_way(
    stack, state, not_found_share, share, http_status
):
    not_found_share(share)
    known, unknown = register_shipments(stack.simulator, FLOW, ["delivered", None])
    records = records_by_key(run_fetch(courier_client(FLOW, stack.env, state), [known, unknown]))
    assert records[known].state == FetchState.ANSWERED
    assert (records[unknown].state, records[unknown].http_status) == (
        FetchState.NOT_ANSWERED,
        http_status,
    )


def test_workers_follow_b2b_tracking_workers(monkeypatch):
    monkeypatch.setenv("B2B_TRACKING_WORKERS", "7")
    assert FLOWS[FLOW].workers == 7


def test_at_most_one_token_refresh_per_30_seconds(stack, state):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit"] * 3)
    stack.simulator.inject_fault(FLOW, "token_expired", count=3)
    before = simulator_counts(stack.simulator, FLOW)["logins"]
    client = courier_client(FLOW, stack.env, state, flow_changes={"concurrency": 1})
    result = run_fetch(client, keys)
    first, second, third = (records_by_key(result)[key] for key in keys)
    # the run's first login, then one refresh; the retry after it is refused once more
    assert result.stats.logins == 2
    assert simulator_counts(stack.simulator, FLOW)["logins"] == before + 2
    assert (first.state, first.http_status) == (FetchState.FAILED, 401)
    assert second.state == FetchState.FAILED and "not refreshing again" in second.error
    assert third.state == FetchState.ANSWERED


def test_a_firewall_403_on_login_pauses_b2b_and_blocks_no_login(stack, state):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit"] * 2)
    stack.simulator.inject_fault(FLOW, "forbidden", endpoint="login")
    client = courier_client(FLOW, stack.env, state)
    result = run_fetch(client, keys)
    assert {record.state for record in result.records} == {FetchState.DEFERRED}
    assert 403 in {record.http_status for record in result.records}  # the others wait: paused
    assert result.stats.logins == 1
    assert state.paused_until("delhivery_b2b") is not None
    assert state.login_blocked_until(client.token_key) is None
