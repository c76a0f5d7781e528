"""Velocity: every contract §5 row, the fallback to `shipment_track`, the answer shapes, and its
one shared token (a login elsewhere revokes ours: the store is re-read before logging in)."""

import asyncio
import json
from datetime import UTC, datetime

import httpx
import pytest

from ordertrack_dagster.couriers.failures import BatchFailure
from ordertrack_dagster.couriers.velocity import STATUS_TABLE, VelocityClient, interpret
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.records import FetchState, OrderContext, Outcome
from ordertrack_dagster.resources.state import CachedToken, SharedState
from ordertrack_dagster.statuses import Canonical as C
from ordertrack_dagster_tests.fixtures import sample
from ordertrack_dagster_tests.helpers import (
    courier_client,
    records_by_key,
    register_shipments,
    run_fetch,
    simulator_counts,
)

FLOW = "velocity"
NOW = datetime(2025, 7, 31, 6, 0, tzinfo=UTC)
ORDER = OrderContext(order_id="ORD-1", tracking_key="PD6786164")

ROWS = {
    None: "MANIFEST_UPLOADED PENDING PROCESSING READY_FOR_PICKUP PICKUP_SCHEDULED",
    C.IN_TRANSIT: "IN_TRANSIT SHIPPED PICKED_UP",
    C.OUT_FOR_DELIVERY: "OUT_FOR_DELIVERY",
    C.DELIVERED: "DELIVERED",
    C.NDR: "NDR UNDELIVERED FAILED_ATTEMPT NDR_RAISED NEED_ATTENTION REATTEMPT_DELIVERY",
    C.RTO: "RTO RTO_INITIATED RTO_DELIVERED",
    C.RTO_IN_TRANSIT: "RTO_IN_TRANSIT RETURN_TO_ORIGIN RTO_NEED_ATTENTION",
    C.BOOKING_CANCELLED: "CANCELLED NOT_PICKED REJECTED",
    C.LOST: "LOST MISSING RTO_LOST",
    C.DESTROY: "DAMAGED DESTROYED",
}
CASES = [(raw, status) for status, raws in ROWS.items() for raw in raws.split()]


def answer(shipment_status=None, current=None):
    return {
        "tracking_data": {
            "shipment_status": shipment_status,
            "shipment_track": [{"awb_code": "PD6786164", "current_status": current}],
            "shipment_track_activities": [
                {"date": "2025-07-30 17:39:29", "activity": "DELIVERED"},
                {"date": "2025-07-30 16:20:31", "activity": "PICKED UP"},
            ],
        }
    }


@pytest.mark.parametrize("raw, canonical", CASES)
def test_every_row_maps_shipment_status(raw, canonical):
    sent = raw.lower()  # Velocity sends "in_transit", "ndr_raised"
    reading = interpret(answer(shipment_status=sent), ORDER, NOW)
    assert reading.status == canonical
    assert reading.outcome == (Outcome.MAPPED if canonical else Outcome.NO_CHANGE)
    assert reading.courier_status == sent


@pytest.mark.parametrize("raw, canonical", CASES)
def test_without_shipment_status_the_track_current_status_is_used(raw, canonical):
    reading = interpret(answer(current=raw.lower()), ORDER, NOW)
    assert reading.status == canonical
    assert reading.courier_status == raw.lower()


def test_the_table_has_exactly_the_spec_rows():
    assert len(STATUS_TABLE) == len(CASES)


def test_shipment_status_wins_over_current_status():
    reading = interpret(answer("in_transit", "delivered"), ORDER, NOW)
    assert reading.status == C.IN_TRANSIT


def test_an_unmapped_status_raises_an_alert_naming_it():
    reading = interpret(answer("misrouted", "misrouted"), ORDER, NOW)
    assert (reading.outcome, reading.courier_status) == (Outcome.UNMAPPED, "misrouted")
    assert "misrouted" in reading.alert


def test_the_time_is_the_newest_activity_in_india_time():
    reading = interpret(answer("delivered"), ORDER, NOW)
    assert reading.event_time == datetime(2025, 7, 30, 12, 9, 29, tzinfo=UTC)


@pytest.mark.parametrize("bad", [None, {}, {"tracking_data": []}, answer()])
def test_malformed_answers_fail(bad):
    assert interpret(bad, ORDER, NOW).outcome == Outcome.FAILED


def offline_client() -> VelocityClient:
    return VelocityClient(FLOWS[FLOW], None, "http://v.test", "user", "secret")


def test_realistic_sample():
    keys = ["PD6786164", "PD6786171", "PD0000000"]
    answers = offline_client().split_answer(keys, sample("velocity_order_tracking"))
    assert set(answers) == set(keys[:2])  # missing from `result`: not found
    delivered = interpret(answers["PD6786164"], ORDER, NOW)
    assert (delivered.status, delivered.courier_status) == (C.DELIVERED, "delivered")
    assert delivered.event_time == datetime(2025, 7, 30, 12, 9, 29, tzinfo=UTC)
    assert interpret(answers["PD6786171"], ORDER, NOW).status == C.IN_TRANSIT


@pytest.mark.parametrize("payload", [{"message": "Invalid request"}, {"foo": 1}, []])
def test_answers_without_result_fail_the_batch(payload):
    with pytest.raises(BatchFailure):
        offline_client().split_answer(["PD1"], payload)


def test_an_empty_result_answers_nothing():
    assert offline_client().split_answer(["PD1"], {"result": []}) == {}


def test_asks_45_awbs_in_one_post_with_the_raw_token():
    client = offline_client()
    request = client.build_request(["PD1", "PD2"])
    assert (request.method, request.url) == ("POST", "http://v.test/custom/api/v1/order-tracking")
    assert request.json == {"awbs": ["PD1", "PD2"]}
    assert client.token_headers("tok") == {"Authorization": "tok"}
    assert FLOWS[FLOW].batch_size == 45


def test_the_login_expiry_is_kept_with_the_token():
    token = offline_client().read_login(
        {"token": "abc", "expires_at": "2025-08-01T12:00:00+05:30"}, NOW
    )
    assert token == CachedToken("abc", datetime(2025, 8, 1, 6, 30, tzinfo=UTC))


# -- against the simulator ----------------------------------------------------------------


@pytest.fixture
def state(db):
    return SharedState(db)


def test_an_awb_missing_from_result_is_not_found(stack, state):
    known, unknown = register_shipments(stack.simulator, FLOW, ["out_for_delivery", None])
    records = records_by_key(run_fetch(courier_client(FLOW, stack.env, state), [known, unknown]))
    assert records[known].state == FetchState.ANSWERED
    assert json.loads(records[known].raw)["tracking_data"]["shipment_status"] == "out_for_delivery"
    assert records[unknown].state == FetchState.NOT_ANSWERED


def _log_in_elsewhere(stack) -> CachedToken:
    """What another process does: log in (revoking every older token) and store the token."""
    env = stack.env
    body = {"username": env["VELOCITY_USERNAME"], "password": env["VELOCITY_PASSWORD"]}
    answer = httpx.post(f"{env['VELOCITY_URL']}/custom/api/v1/auth-token", json=body).json()
    return offline_client().read_login(answer, datetime.now(UTC))


def test_a_token_revoked_by_another_login_is_replaced_from_the_store(stack, state):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit", "delivered"])
    run_fetch(courier_client(FLOW, stack.env, state), keys)  # stores token A
    client = courier_client(FLOW, stack.env, state, flow_changes={"concurrency": 2})

    async def take_the_stored_token() -> None:
        async with httpx.AsyncClient() as http:
            await client.auth_headers(http)

    asyncio.run(take_the_stored_token())  # this run now holds A
    state.save_token(client.token_key, _log_in_elsewhere(stack))  # B revokes A
    before = simulator_counts(stack.simulator, FLOW)
    result = run_fetch(client, keys)
    after = simulator_counts(stack.simulator, FLOW)
    assert {record.state for record in result.records} == {FetchState.ANSWERED}
    assert after["status_codes"].get("401", 0) > before["status_codes"].get("401", 0)  # A refused
    assert result.stats.logins == 0  # B came from the store: no login that would revoke it
    assert after["logins"] == before["logins"]
