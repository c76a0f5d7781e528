"""Delhivery express (B2C) and fallback: every contract §5 row, the rules, the error shapes."""

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from ordertrack_dagster.couriers.delhivery import (
    FAILED_DELIVERY_CODES,
    LEGACY_TABLE,
    PAIR_TABLE,
    DelhiveryB2CClient,
    DelhiveryFallbackClient,
    cut_shipments,
    interpret_express,
    interpret_fallback,
    references_match,
)
from ordertrack_dagster.couriers.failures import BatchFailure, NotAnswered
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.records import OrderContext, Outcome
from ordertrack_dagster.statuses import Canonical as C
from ordertrack_dagster_tests.fixtures import SAMPLES, sample

NOW = datetime(2024, 9, 22, 6, 0, tzinfo=UTC)  # 11:30 in India
ORDER = OrderContext(order_id="2237", tracking_key="26805710004060")


def shipment(status_type, status, code="X-1", pickup="2024-09-18T18:26:01", reference="2237"):
    return {
        "AWB": "26805710004060",
        "ReferenceNo": reference,
        "PickUpDate": pickup,
        "Status": {
            "Status": status,
            "StatusType": status_type,
            "StatusCode": code,
            "StatusDateTime": "2024-09-21T17:22:31.5",
        },
    }


PAIR_ROWS = [
    ("UD", "Manifested", None),
    ("UD", "Not Picked", C.BOOKING_CANCELLED),
    ("UD", "In Transit", C.IN_TRANSIT),
    ("UD", "Dispatched", C.OUT_FOR_DELIVERY),
    ("DL", "Delivered", C.DELIVERED),
    ("DL", "RTO", C.RTO),
    ("RT", "In Transit", C.RTO_IN_TRANSIT),
    ("RT", "Pending", C.RTO_IN_TRANSIT),
    ("RT", "Dispatched", C.RTO_IN_TRANSIT),
    ("DL", "DTO", C.DELIVERED),
    ("UD", "LOST", C.LOST),
    ("RT", "Lost", C.LOST),
    ("DL", "LOST", C.LOST),
]


@pytest.mark.parametrize("status_type, status, canonical", PAIR_ROWS)
def test_pair_table_rows(status_type, status, canonical):
    reading = interpret_express(shipment(status_type, status), ORDER, NOW)
    assert reading.status == canonical
    assert reading.outcome == (Outcome.MAPPED if canonical else Outcome.NO_CHANGE)


def test_pair_table_covers_every_spec_pair():
    assert len(PAIR_TABLE) == 10


@pytest.mark.parametrize(
    "pickup, canonical",
    [
        ("2024-09-21T23:59:00", C.IN_TRANSIT),  # yesterday in India
        ("2024-09-22T09:00:00", C.PENDING),  # today in India
        ("2024-09-21T20:00:00Z", C.PENDING),  # 01:30 on the 22nd in India
        (None, C.PENDING),
    ],
)
def test_ud_pending_depends_on_pickup_date_in_india_time(pickup, canonical):
    reading = interpret_express(shipment("UD", "Pending", pickup=pickup), ORDER, NOW)
    assert reading.status == canonical


@pytest.mark.parametrize("code", sorted(FAILED_DELIVERY_CODES))
@pytest.mark.parametrize("status", ["Pending", "Dispatched"])
def test_failed_delivery_codes_mean_ndr(code, status):
    assert interpret_express(shipment("UD", status, code=code), ORDER, NOW).status == C.NDR


def test_a_non_failure_code_on_dispatched_stays_out_for_delivery():
    reading = interpret_express(shipment("UD", "Dispatched", code="X-DDD3FD"), ORDER, NOW)
    assert reading.status == C.OUT_FOR_DELIVERY


LEGACY_ROWS = {
    None: "PICK_UP_PENDING MANIFESTED WAITING_PICKUP PICKUP_QUEUED PICKUP_RESCHEDULED "
    "PICK_REQUESTED SHIPMENT_BOOKED",
    C.IN_TRANSIT: "IN_TRANSIT PICKED_UP DISPATCHED RECEIVED_AT_ORIGIN REACHED_AT_DESTINATION "
    "REACH_DESTINATION LEFT_ORIGIN BAGGED RECEIVED ADDED_TO_BAG CONNECTION_ALLOCATED "
    "IN_TRANSIT_TO PICKUP_COMPLETE SHIPPED IN_TRANSIT_TO_NEXT_FACILITY",
    C.OUT_FOR_DELIVERY: "OFD OUT_FOR_DELIVERY",
    C.DELIVERED: "DELIVERED SHIPMENT_DELIVERED PART_DEL",
    C.RTO: "RTO RETURNED OUT_FOR_RETURN RTO_DELIVERED RETURNED_TO_ORIGIN RTO_COMPLETED "
    "RETURN_DELIVERED",
    C.RTO_IN_TRANSIT: "RETURNED_INTRANSIT RTO_IN_TRANSIT RTO_IN_INTRANSIT RTO_OUT_FOR_DELIVERY "
    "RTO_OFD RECEIVED_AT_RETURN_CENTER RETURN_OFD",
    C.BOOKING_CANCELLED: "NOT_PICKED CANCELLED BOOKING_CANCELLED",
    C.NDR: "NDR FAILED_DELIVERY UNDELIVERED UNDEL_REATTEMPT",
    C.LOST: "LOST MISSING UNTRACEABLE",
    C.DESTROY: "DESTROYED DISPOSED_OFF DAMAGED",
}
LEGACY_CASES = [(raw, status) for status, raws in LEGACY_ROWS.items() for raw in raws.split()]


@pytest.mark.parametrize("raw, canonical", LEGACY_CASES)
def test_legacy_table_rows(raw, canonical):
    assert LEGACY_TABLE[raw] == canonical


@pytest.mark.parametrize("raw, canonical", LEGACY_CASES)
def test_legacy_table_answers_pairs_the_pair_table_lacks(raw, canonical):
    # a status type the pair table does not know falls back to the status alone
    reading = interpret_express(shipment("XX", raw.replace("_", " ").title()), ORDER, NOW)
    assert reading.status == canonical


def test_legacy_table_has_exactly_the_spec_rows():
    assert len(LEGACY_TABLE) == len(LEGACY_CASES)


def test_courier_status_is_type_and_normalised_status_in_lower_case():
    reading = interpret_express(shipment("UD", "In Transit"), ORDER, NOW)
    assert reading.courier_status == "ud-in_transit"


def test_event_time_is_status_date_time_in_india_time():
    reading = interpret_express(shipment("UD", "In Transit"), ORDER, NOW)
    assert reading.event_time == datetime(2024, 9, 21, 11, 52, 31, 500000, tzinfo=UTC)


def test_unmapped_status_is_no_change_with_an_alert_naming_the_raw_value():
    reading = interpret_express(shipment("UD", "Misrouted"), ORDER, NOW)
    assert reading.outcome == Outcome.UNMAPPED
    assert reading.status is None
    assert "Misrouted" in reading.alert
    assert reading.courier_status == "ud-misrouted"


@pytest.mark.parametrize(
    "reference, order_id, same",
    [
        ("2237", "2237", True),
        ("2241-C1", "2241", True),
        ("2241", "2241-c2", True),
        ("ABC-K", "abc-R", True),
        ("SHP-100231", "shp-100231", True),
        ("2241-C3", "2241", False),
        ("2238", "2237", False),
        ("22371", "2237", False),
    ],
)
def test_reference_check_allows_rebooking_suffixes(reference, order_id, same):
    assert references_match(reference, order_id) is same


def test_reference_mismatch_records_the_poll_but_not_the_status():
    reading = interpret_express(shipment("DL", "Delivered", reference="9999"), ORDER, NOW)
    assert reading.outcome == Outcome.REFERENCE_MISMATCH
    assert reading.status is None
    assert reading.courier_status == "dl-delivered"
    assert "9999" in reading.alert


@pytest.mark.parametrize("answer", [None, "text", {}, {"Status": "Delivered"}, [1, 2]])
def test_malformed_answers_fail_with_an_alert(answer):
    reading = interpret_express(answer, ORDER, NOW)
    assert reading.outcome == Outcome.FAILED
    assert reading.alert


def test_realistic_sample_answer():
    client = DelhiveryB2CClient(FLOWS["delhivery_b2c"], state=None, url="u", token="t")
    keys = ["26805710004060", "26805710004071", "26805710004085", "26805710009999"]
    answers = client.split_answer(keys, sample("delhivery_b2c_track"))
    assert set(answers) == set(keys[:3])  # the unknown waybill is simply absent
    orders = {"26805710004060": "2237", "26805710004071": "2241", "26805710004085": "2250"}
    readings = {
        key: interpret_express(answers[key], OrderContext(orders[key], key), NOW) for key in answers
    }
    assert readings["26805710004060"].status == C.DELIVERED
    assert readings["26805710004071"].status == C.RTO_IN_TRANSIT  # ReferenceNo 2241-C1
    assert readings["26805710004085"].status == C.NDR  # UD/Pending with EOD-11


def test_error_body_means_not_answered():
    client = DelhiveryB2CClient(FLOWS["delhivery_b2c"], state=None, url="u", token="t")
    with pytest.raises(NotAnswered, match="No such waybill"):
        client.split_answer(["1"], sample("delhivery_b2c_error"))


@pytest.mark.parametrize("payload", [{"foo": 1}, [], "ok", {"ShipmentData": "x"}])
def test_unexpected_shapes_fail_the_batch(payload):
    client = DelhiveryB2CClient(FLOWS["delhivery_b2c"], state=None, url="u", token="t")
    with pytest.raises(BatchFailure):
        client.split_answer(["1"], payload)


def answer_texts(body: bytes, keys: list[str]) -> dict[str, str]:
    client = DelhiveryB2CClient(FLOWS["delhivery_b2c"], state=None, url="u", token="t")
    response = httpx.Response(200, headers={"Content-Type": "application/json"}, content=body)
    return client.answer_texts(keys, response)


def shipments_in(body: bytes) -> dict[str, object]:
    """Each shipment of an answer by AWB, as a standard JSON reader sees the body."""
    payload = json.loads(body.decode("utf-8", "surrogatepass"))
    items = [item.get("Shipment") for item in payload["ShipmentData"] if isinstance(item, dict)]
    return {
        str(s["AWB"]).strip(): s for s in items if isinstance(s, dict) and s.get("AWB") is not None
    }


def test_each_waybill_keeps_its_shipment_as_the_courier_sent_it():
    """The sample is spaced as a person writes it: each text is the courier's own bytes."""
    body = (SAMPLES / "delhivery_b2c_track.json").read_bytes()
    keys = ["26805710004060", "26805710004071", "26805710004085"]
    texts = answer_texts(body, keys)
    assert cut_shipments(body) is not None  # cut from the body, not written again
    assert set(texts) == set(keys)
    for key, text in texts.items():
        assert text in body.decode()
        assert json.loads(text) == shipments_in(body)[key]


#: JSON syntax, escapes and raw UTF-8 inside a string, as JSON text.
_TRICKY = r"}]},{\"Shipment\":{\"AWB\":\"FAKE1\"}} \\ \u00e9\ud83d\ude00 é 😀 \u2028"
HOSTILE_BODIES = {
    "syntax inside strings": '{"ShipmentData":[{"Shipment":{"AWB":"H1","Status":{"Status":'
    '"In Transit","StatusType":"UD","Instructions":"' + _TRICKY + '"}}}]}',
    "repeated keys, the last counts": '{"ShipmentData":[{"Shipment":{"AWB":"H1","Status":'
    '{"Status":"Manifested","StatusType":"UD"},"Status":{"Status":"Delivered","StatusType":"DL"}'
    "}}]}",
    "numbers no 64 bits hold": '{"ShipmentData":[{"Shipment":{"AWB":"H1","CODAmount":'
    '12345678901234567890123,"ChargedWeight":1.5e3,"InvoiceAmount":-0.0,"Status":'
    '{"Status":"RTO","StatusType":"DL"}}}]}',
    "spaced and indented": '{\n\t"ShipmentData" : [ { "Shipment" : {\n  "AWB" : " H1 " ,\n'
    '  "Status" : { "Status" : "Delivered" , "StatusType" : "DL" } } , "Other" : [ ] } ]\n}\n',
    "a lone surrogate": '{"ShipmentData":[{"Shipment":{"AWB":"H1","Scan":"\\ud800",'
    '"Status":{"Status":"Delivered","StatusType":"DL"}}}]}',
    "entries that are not shipments": '{"ShipmentData":[null,{"Other":1},{"Shipment":"x"},'
    '{"Shipment":{"AWB":null}},{"Shipment":{"AWB":"H1","Status":{"Status":"Delivered",'
    '"StatusType":"DL"}}}]}',
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_each_kept_text_is_the_json_of_its_shipment_in_hostile_answers(body):
    raw = body.encode("utf-8", "surrogatepass")
    expected = shipments_in(raw)
    texts = answer_texts(raw, list(expected))
    assert set(texts) == set(expected)
    for key, text in texts.items():
        assert json.loads(text) == expected[key]


def test_the_same_awb_twice_keeps_the_text_of_the_newest():
    def entry(status: str, when: str) -> str:
        status_json = {"Status": status, "StatusType": "UD", "StatusDateTime": when}
        return json.dumps({"Shipment": {"AWB": "T1", "Status": status_json}})

    body = f'{{"ShipmentData":[{entry("Dispatched", "2024-09-21T10:00:00")},'
    body += f"{entry('In Transit', '2024-09-20T10:00:00')}]}}"
    [text] = answer_texts(body.encode(), ["T1"]).values()
    assert json.loads(text)["Status"]["Status"] == "Dispatched"
    assert text in body


def test_an_error_body_read_from_bytes_is_still_not_answered():
    body = (SAMPLES / "delhivery_b2c_error.json").read_bytes()
    with pytest.raises(NotAnswered, match="No such waybill"):
        answer_texts(body, ["1"])


def test_b2c_asks_fifty_waybills_in_one_get():
    client = DelhiveryB2CClient(FLOWS["delhivery_b2c"], state=None, url="http://x/", token="t")
    request = client.build_request(["A1", "B2"])
    assert (request.method, request.params) == ("GET", {"waybill": "A1,B2"})


# -- fallback ---------------------------------------------------------------------------


def test_fallback_asks_one_waybill_with_wbn():
    client = DelhiveryFallbackClient(FLOWS["delhivery_fallback"], None, "http://x/", "t")
    assert client.build_request(["A1"]).params == {"wbn": "A1"}


@pytest.mark.parametrize(
    "error",
    [
        "Invalid AWB number",
        "Shipment reached END STATE",
        "waybill is very old",
    ],
)
def test_fallback_stops_tracking_on_end_state_errors(error):
    client = DelhiveryFallbackClient(FLOWS["delhivery_fallback"], None, "http://x/", "t")
    answers = client.split_answer(["A1"], {"Success": False, "Error": error})
    reading = interpret_fallback(answers["A1"], ORDER, NOW)
    assert reading.stop_tracking
    assert reading.outcome.was_read


def test_fallback_other_errors_keep_tracking():
    reading = interpret_fallback({"Success": False, "Error": "No such waybill"}, ORDER, NOW)
    assert not reading.stop_tracking
    assert reading.outcome == Outcome.NOT_FOUND


@pytest.mark.parametrize("age_days, stops", [(8, True), (7, True), (6, False)])
def test_fallback_stops_tracking_seven_days_after_an_end_state(age_days, stops):
    answer = shipment("DL", "Delivered")
    # zone-less India time: UTC plus 5:30
    india_time = NOW - timedelta(days=age_days) + timedelta(hours=5, minutes=30)
    answer["Status"]["StatusDateTime"] = india_time.strftime("%Y-%m-%dT%H:%M:%S")
    reading = interpret_fallback(answer, ORDER, NOW)
    assert reading.status == C.DELIVERED
    assert reading.stop_tracking is stops


def test_fallback_keeps_tracking_a_moving_shipment():
    reading = interpret_fallback(shipment("UD", "In Transit"), ORDER, NOW)
    assert reading.status == C.IN_TRANSIT and not reading.stop_tracking
