"""Shiprocket: every contract §5 row (names and numeric codes), the order of the fallbacks, the
no-scans answer, the answer shapes, and the realistic sample."""

import json
from datetime import UTC, datetime

import pytest

from ordertrack_dagster.couriers.failures import BatchFailure
from ordertrack_dagster.couriers.shiprocket import (
    CODE_TABLE,
    STATUS_TABLE,
    ShiprocketClient,
    interpret,
)
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.records import FetchState, OrderContext, Outcome
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.statuses import Canonical as C
from ordertrack_dagster_tests.fixtures import sample
from ordertrack_dagster_tests.helpers import (
    courier_client,
    records_by_key,
    register_shipments,
    run_fetch,
)

NOW = datetime(2024, 9, 22, 6, 0, tzinfo=UTC)
ORDER = OrderContext(order_id="2237", tracking_key="141123221084922")

NAME_ROWS = {
    None: "SHIPPED PICKUP_RESCHEDULED OUT_FOR_PICKUP PENDING PICKUP_ERROR AWB_ASSIGNED "
    "LABEL_GENERATED PICKUP_SCHEDULED PICKUP_GENERATED PICKUP_QUEUED MANIFEST_GENERATED",
    C.IN_TRANSIT: "IN_TRANSIT PICKED_UP REACHED_DEST_CITY REACHED_AT_DESTINATION "
    "REACHED_AT_DESTINATION_HUB RECEIVED_AT_ORIGIN IN_TRANSIT_TO_NEXT_FACILITY DISPATCHED",
    C.OUT_FOR_DELIVERY: "OUT_FOR_DELIVERY",
    C.DELIVERED: "DELIVERED",
    C.NDR: "NDR FAILED_DELIVERY UNDELIVERED",
    C.RTO: "RTO RTO_INITIATED RTO_DELIVERED RTO_ACKNOWLEDGED",
    C.RTO_IN_TRANSIT: "RTO_IN_TRANSIT RTO_OFD RTO_OUT_FOR_DELIVERY RTO_NDR",
    C.BOOKING_CANCELLED: "CANCELLED CANCELED NOT_PICKED CANCELED_BY_SELLER CANCELLATION_REQUESTED",
    C.LOST: "LOST UNTRACEABLE MISSING",
    C.DESTROY: "DESTROYED DISPOSED_OFF DAMAGED",
}
NAME_CASES = [(raw, status) for status, raws in NAME_ROWS.items() for raw in raws.split()]

CODE_ROWS = {
    C.IN_TRANSIT: [6, 18, 38, 42],
    C.OUT_FOR_DELIVERY: [17],
    C.DELIVERED: [7],
    C.NDR: [21],
    C.RTO: [9, 10, 14],
    C.RTO_IN_TRANSIT: [40, 41, 46],
    C.BOOKING_CANCELLED: [8, 16, 45],
    C.LOST: [12, 76],
    C.DESTROY: [24, 25, 44],
    None: [0, 1, 2, 3, 4, 5, 11, 13, 15, 19, 20, 27, 52],
}
CODE_CASES = [(code, status) for status, codes in CODE_ROWS.items() for code in codes]


def answer(current=None, label=None, code=None, activity_status="XX", track=True):
    activities = [
        {"date": "2022-07-19 11:37:00", "status": activity_status, "sr-status-label": label},
        {"date": "2022-07-19 08:57:00", "status": "OFD", "sr-status-label": "OUT FOR DELIVERY"},
    ]
    data = {"track_status": 1, "shipment_status": code, "shipment_track_activities": activities}
    if track:
        data["shipment_track"] = [{"awb_code": "141123221084922", "current_status": current}]
    return {"tracking_data": data}


def as_sent(raw: str) -> str:
    """How Shiprocket writes a status: words, capitalised ("Out For Delivery")."""
    return raw.replace("_", " ").title()


@pytest.mark.parametrize("raw, canonical", NAME_CASES)
def test_every_name_row_maps_current_status(raw, canonical):
    reading = interpret(answer(current=as_sent(raw)), ORDER, NOW)
    assert reading.status == canonical
    assert reading.outcome == (Outcome.MAPPED if canonical else Outcome.NO_CHANGE)
    assert reading.courier_status == as_sent(raw)


@pytest.mark.parametrize("raw, canonical", NAME_CASES)
def test_without_current_status_the_newest_activity_label_is_used(raw, canonical):
    label = raw.replace("_", " ")  # labels come upper-case: "OUT FOR DELIVERY"
    reading = interpret(answer(label=label, track=False), ORDER, NOW)
    assert reading.status == canonical
    assert reading.courier_status == label


@pytest.mark.parametrize("code, canonical", CODE_CASES)
def test_every_numeric_code_maps_when_no_name_does(code, canonical):
    reading = interpret(answer(current="Weird Status", label="NA", code=code), ORDER, NOW)
    assert reading.status == canonical
    assert reading.outcome == (Outcome.MAPPED if canonical else Outcome.NO_CHANGE)
    assert reading.courier_status == str(code)


def test_the_tables_have_exactly_the_spec_rows():
    assert len(STATUS_TABLE) == len(NAME_CASES)
    assert len(CODE_TABLE) == len(CODE_CASES)


def test_current_status_wins_over_label_and_code():
    reading = interpret(answer(current="In Transit", label="DELIVERED", code=7), ORDER, NOW)
    assert (reading.status, reading.courier_status) == (C.IN_TRANSIT, "In Transit")


def test_an_unmapped_current_status_falls_back_to_the_label():
    reading = interpret(answer(current="Weird Status", label="DELIVERED", code=39), ORDER, NOW)
    assert (reading.status, reading.courier_status) == (C.DELIVERED, "DELIVERED")


def test_nothing_maps_is_unmapped_naming_every_raw_value():
    reading = interpret(answer(current="Weird Status", label="WEIRD", code=39), ORDER, NOW)
    assert reading.outcome == Outcome.UNMAPPED and reading.status is None
    assert reading.courier_status == "Weird Status"
    assert all(raw in reading.alert for raw in ("Weird Status", "WEIRD", "39"))


@pytest.mark.parametrize("carrier_code", ["DLVD", "RTO", "Delivered", "LOST"])
def test_the_activity_status_field_is_never_mapped(carrier_code):
    reading = interpret(answer(label="NA", activity_status=carrier_code, track=False), ORDER, NOW)
    assert reading.outcome == Outcome.UNMAPPED
    assert reading.status is None


def test_no_scans_yet_is_read_as_no_change():
    reading = interpret(sample("shiprocket_track_awbs")["788830567028"], ORDER, NOW)
    assert (reading.outcome, reading.status, reading.alert) == (Outcome.NO_CHANGE, None, None)
    assert reading.outcome.was_read


def test_the_time_is_the_newest_activity_in_india_time():
    reading = interpret(answer(current="Delivered"), ORDER, NOW)
    assert reading.event_time == datetime(2022, 7, 19, 6, 7, tzinfo=UTC)


@pytest.mark.parametrize("bad", [None, {}, {"tracking_data": "x"}, answer(track=False)])
def test_malformed_answers_fail(bad):
    assert interpret(bad, ORDER, NOW).outcome == Outcome.FAILED


def offline_client() -> ShiprocketClient:
    return ShiprocketClient(FLOWS["shiprocket"], None, "http://sr.test/", "a@b.c", "secret")


def test_realistic_sample():
    keys = ["141123221084922", "788830567028", "000000000000"]
    answers = offline_client().split_answer(keys, sample("shiprocket_track_awbs"))
    assert set(answers) == set(keys[:2])  # an AWB left out is not answered
    reading = interpret(answers["141123221084922"], ORDER, NOW)
    assert (reading.status, reading.courier_status) == (C.DELIVERED, "Delivered")
    assert reading.event_time == datetime(2022, 7, 19, 6, 7, tzinfo=UTC)


def test_an_error_body_fails_the_batch():
    error = {"message": "The awbs may not have more than 50 items.", "status_code": 422}
    with pytest.raises(BatchFailure, match="may not have more than 50"):
        offline_client().split_answer(["1"], error)
    with pytest.raises(BatchFailure):
        offline_client().split_answer(["1"], ["not", "an", "object"])


def test_asks_fifty_awbs_in_one_post_with_a_bearer_token():
    client = offline_client()
    request = client.build_request(["A1", "B2"])
    assert (request.method, request.url) == (
        "POST",
        "http://sr.test/v1/external/courier/track/awbs",
    )
    assert request.json == {"awbs": ["A1", "B2"]}
    assert client.token_headers("tok") == {"Authorization": "Bearer tok"}
    assert FLOWS["shiprocket"].batch_size == 50


def test_against_the_simulator(stack, db):
    steps = ["reached_destination", "no_scans", "unmapped", None]
    keys = register_shipments(stack.simulator, "shiprocket", steps)
    result = run_fetch(courier_client("shiprocket", stack.env, SharedState(db)), keys)
    records = records_by_key(result)
    assert [records[key].state for key in keys] == [FetchState.ANSWERED] * 3 + [
        FetchState.NOT_ANSWERED
    ]
    readings = [interpret(json.loads(records[k].raw), ORDER, NOW) for k in keys[:3]]
    assert [r.outcome for r in readings] == [Outcome.MAPPED, Outcome.NO_CHANGE, Outcome.UNMAPPED]
    assert readings[0].courier_status == "Reached at Destination Hub"
