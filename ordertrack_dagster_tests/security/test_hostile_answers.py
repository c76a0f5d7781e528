"""Hostile answers on a real loopback server (CUR-POISON-BODY, CUR-TRICKLE, CUR-429-HOSTILE,
CUR-DUP-IN-ANSWER, CUR-BAD-DATES, SEC-MALFORMED-SECRET): each fails or pauses its own batch,
never the fetch, and the other batches are read."""

import gzip
import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from ordertrack_dagster.couriers import delhivery
from ordertrack_dagster.couriers.delhivery import DelhiveryResource
from ordertrack_dagster.couriers.pauses import DEFAULT_RETRY_AFTER_SECONDS
from ordertrack_dagster.couriers.transport import MAX_BODY_BYTES
from ordertrack_dagster.couriers.velocity import DEFAULT_TOKEN_LIFETIME, VelocityClient
from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.records import FetchState, Outcome
from ordertrack_dagster.resources.state import MAX_PAUSE, SharedState
from ordertrack_dagster.statuses import Canonical
from ordertrack_dagster.tracking.mapping import interpret_answers
from ordertrack_dagster_tests.helpers import records_by_key, run_fetch
from ordertrack_dagster_tests.hostile import Raw, Seen, hostile_server, json_answer

TOKEN = "dlv-b2c-token-5b0e77aa"
GOOD_AWB = "AWB0000000001"


def shipment(awb: str, status: str = "In Transit", when: str = "2026-11-30T10:00:00") -> dict:
    return {
        "AWB": awb,
        "Status": {"Status": status, "StatusType": "UD", "StatusDateTime": when},
    }


def answer(*shipments: dict) -> Raw:
    return json_answer(json.dumps({"ShipmentData": [{"Shipment": s} for s in shipments]}))


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


POISON: dict[str, Raw] = {
    "AWBNESTED0001": json_answer(b'{"ShipmentData": ' + nested(100_000) + b"}"),
    "AWBNESTED0002": json_answer(nested(1_500)),  # deeper than orjson's and json's limits
    "AWBBADGZIP001": json_answer(b"this is not gzip at all", **{"Content-Encoding": "gzip"}),
    "AWBCHARSET001": Raw(
        200, [("Content-Type", "application/json; charset=x-no-such-charset")], b"\xff\xfe{"
    ),
    "AWBHUGEDECL01": Raw(
        200, [("Content-Length", str(50 * 2**20))], b"", content_length=False
    ),  # declares 50 MB: refused before reading
    "AWBHUGESTRM01": Raw(  # 50 MB with no length given: refused once past the limit
        200, [("Content-Type", "application/json")], chunks=(b" " * 2**20 for _ in range(50))
    ),
    "AWBGZIPBOMB01": json_answer(
        gzip.compress(b" " * (MAX_BODY_BYTES + 2**20)), **{"Content-Encoding": "gzip"}
    ),
}


def client_for(server_url: str, state: SharedState, token: str = TOKEN, **flow_changes):
    changes = {"batch_size": 1, "concurrency": 4, "concurrency_env": None}
    flow = replace(get_flow("delhivery_b2c"), **(changes | {"default_rate_budget": None}))
    flow = replace(flow, **flow_changes)
    resource = DelhiveryResource(url=f"{server_url}/track", fallback_url=server_url, token=token)
    return resource.client(flow, state)


def by_waybill(answers: dict[str, Raw]):
    def handle(seen: Seen) -> Raw:
        awb = seen.query["waybill"][0]
        return answers.get(awb) or answer(shipment(awb))

    return handle


@pytest.fixture
def state(db):
    return SharedState(db)


def test_poison_bodies_fail_only_their_own_batch(state):
    with hostile_server(by_waybill(POISON)) as server:
        result = run_fetch(client_for(server.url, state), [*POISON, GOOD_AWB])
    records = records_by_key(result)
    assert records[GOOD_AWB].state is FetchState.ANSWERED
    for awb in POISON:
        assert records[awb].state is FetchState.FAILED, awb
        assert records[awb].error, awb
    assert "over 16,777,216 bytes" in records["AWBHUGEDECL01"].error
    assert "over 16,777,216 bytes" in records["AWBHUGESTRM01"].error
    assert "over 16,777,216 bytes" in records["AWBGZIPBOMB01"].error
    assert "unreadable body: DecodingError" in records["AWBBADGZIP001"].error
    assert result.stats.batches_failed == len(POISON)


def test_a_trickled_body_fails_within_the_total_deadline(state):
    trickle = Raw(200, [("Content-Type", "application/json")], chunks=(b" " for _ in range(60)))
    trickle.pause = 0.2  # a byte every 0.2 s: each read is quick, the whole body is not
    with hostile_server(by_waybill({"AWBTRICKLE001": trickle})) as server:
        started = time.monotonic()
        result = run_fetch(
            client_for(server.url, state, timeout_seconds=1.0), ["AWBTRICKLE001", GOOD_AWB]
        )
        elapsed = time.monotonic() - started
    records = records_by_key(result)
    assert records["AWBTRICKLE001"].state is FetchState.FAILED
    assert records["AWBTRICKLE001"].error == "no complete answer within 1 s"
    assert records["AWBTRICKLE001"].attempts == 3
    assert elapsed < 3 * 1.0 + 3 * 2.0 + 2.0  # attempts × deadline + backoff + ε
    assert records[GOOD_AWB].state is FetchState.ANSWERED


@pytest.mark.parametrize(
    "retry_after",
    [
        "inf",
        "1e308",
        "86400000",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "99999999999999999999",
        "-30",
        "garbage;\x7f",
    ],
)
def test_a_hostile_retry_after_is_clamped_and_named(state, retry_after):
    limited = Raw(429, [("Retry-After", retry_after)], b"slow down")
    with hostile_server(lambda seen: limited) as server:
        before = datetime.now(UTC)
        result = run_fetch(client_for(server.url, state, concurrency=1), ["AWBLIMITED001"])
    [record] = result.records
    assert record.state is FetchState.DEFERRED
    paused = state.paused_until("delhivery_express")
    if retry_after == "-30":
        assert paused is None or paused <= datetime.now(UTC) + timedelta(seconds=1)
        return
    assert paused is not None and paused <= before + MAX_PAUSE + timedelta(seconds=5)
    assert repr(retry_after.strip()[:60]) in record.error  # the alert names the value


def test_a_429_without_retry_after_pauses_the_courier_for_five_minutes(state):
    """CUR-429-NO-HEADER through the client and the stored pause: the contract's default."""
    limited = Raw(429, [], b"slow down")
    with hostile_server(lambda seen: limited) as server:
        before = datetime.now(UTC)
        result = run_fetch(client_for(server.url, state, concurrency=1), ["AWBLIMITED002"])
        after = datetime.now(UTC)
    [record] = result.records
    assert record.state is FetchState.DEFERRED
    paused = state.paused_until("delhivery_express")
    default = timedelta(seconds=DEFAULT_RETRY_AFTER_SECONDS)
    assert paused is not None
    assert before + default - timedelta(seconds=1) <= paused <= after + default


def test_a_stored_pause_beyond_the_clamp_reads_as_an_hour_and_ops_can_clear_it(db, state):
    state._collection.insert_one(
        {"_id": "pause:delhivery_express", "resume_at": datetime(9999, 12, 31, tzinfo=UTC)}
    )
    paused = state.paused_until("delhivery_express")
    assert paused is not None and paused <= datetime.now(UTC) + MAX_PAUSE
    state.pause("delhivery_express", datetime.now(UTC) + timedelta(seconds=30))
    assert state.paused_until("delhivery_express") <= datetime.now(UTC) + MAX_PAUSE
    assert (
        state.clear_pause("delhivery_express") and state.paused_until("delhivery_express") is None
    )


def _read(result, awbs: list[str], now: datetime) -> pd.DataFrame:
    raw = pd.DataFrame([record.__dict__ for record in result.records])
    orders = pd.DataFrame(
        {
            "order_oid": [f"{i:024x}" for i in range(len(awbs))],
            "order_id": [f"OT-{i}" for i in range(len(awbs))],
            "tracking_key": awbs,
            "order_status": [None] * len(awbs),
            "booked_at": [None] * len(awbs),
        }
    )
    return interpret_answers(orders, raw, delhivery.interpret_express, now).set_index("order_id")


def test_the_same_awb_twice_resolves_to_the_newest_event_with_an_alert(state):
    twice = answer(
        shipment("AWBTWICE00001", "Delivered", "2026-11-30T12:00:00") | {},
        shipment("AWBTWICE00001", "In Transit", "2026-11-29T08:00:00"),
    )
    twice.body = twice.body.replace(b'"UD"', b'"DL"', 1)
    with hostile_server(lambda seen: twice) as server:
        result = run_fetch(client_for(server.url, state), ["AWBTWICE00001"])
    [row] = _read(result, ["AWBTWICE00001"], datetime.now(UTC)).itertuples()
    assert (row.outcome, row.status) == (Outcome.MAPPED.value, Canonical.DELIVERED.value)
    assert "answered twice with different statuses" in row.alert and "'Delivered'" in row.alert


@pytest.mark.parametrize("sentinel", ["0001-01-01T00:00:00", "9999-12-31T23:59:59", "2099-01-01"])
def test_sentinel_event_times_are_ignored_with_an_alert_never_a_failure(state, sentinel):
    awbs = ["AWBSENTINEL01", GOOD_AWB]
    answers = {"AWBSENTINEL01": answer(shipment("AWBSENTINEL01", when=sentinel))}
    with hostile_server(by_waybill(answers)) as server:
        result = run_fetch(client_for(server.url, state), awbs)
    rows = _read(result, awbs, datetime.now(UTC))
    odd, good = rows.loc["OT-0"], rows.loc["OT-1"]
    assert (odd.outcome, odd.status) == (Outcome.MAPPED.value, Canonical.IN_TRANSIT.value)
    assert pd.isna(odd.event_time) and "ignored" in odd.alert
    assert good.outcome == Outcome.MAPPED.value and not pd.isna(good.event_time)


def test_two_due_orders_sharing_an_awb_get_no_status_from_it(state):
    with hostile_server(by_waybill({})) as server:
        result = run_fetch(client_for(server.url, state), ["AWBSHARED0001"])
    rows = _read(result, ["AWBSHARED0001", "AWBSHARED0001"], datetime.now(UTC))
    assert set(rows["outcome"]) == {Outcome.FAILED.value}
    assert all("held by live orders OT-0, OT-1" in alert for alert in rows["alert"])


def test_each_stored_text_is_its_shipment_as_the_courier_sent_it(state):
    """One batch answer whose strings carry JSON syntax, escapes and raw UTF-8, spaced as a
    person writes it: each key's stored text is its shipment's JSON in that answer, byte for
    byte, and maps as the shipment does."""
    tricky = r"}]},{\"Shipment\":{\"AWB\":\"AWBFAKE000001\"}} \\ \u00e9 é 😀 \u2028"
    awbs = ["AWBTEXT000001", "AWBTEXT000002"]
    shipments = [
        f'{{\n  "AWB": "{awb}", "Instructions": "{tricky}",\n  "Status": {{"Status": '
        f'"In Transit", "StatusType": "UD", "StatusDateTime": "2026-11-30T10:00:00"}}\n}}'
        for awb in awbs
    ]
    body = '{"ShipmentData": [' + ", ".join(f'{{"Shipment": {s}}}' for s in shipments) + "]}"
    with hostile_server(lambda seen: json_answer(body)) as server:
        result = run_fetch(client_for(server.url, state, batch_size=50), awbs)
    records = records_by_key(result)
    for awb, shipment_text in zip(awbs, shipments, strict=True):
        assert records[awb].raw == shipment_text
        assert json.loads(records[awb].raw)["Instructions"].startswith('}]},{"Shipment"')
    rows = _read(result, awbs, datetime.now(UTC))
    assert set(rows["status"]) == {Canonical.IN_TRANSIT.value}


@pytest.mark.parametrize("bad", [TOKEN + "\n", TOKEN + "\r\nX-Injected: 1", f" {TOKEN}"])
def test_a_malformed_token_is_refused_before_sending_and_never_echoed(state, bad):
    with hostile_server(by_waybill({})) as server:
        result = run_fetch(client_for(server.url, state, token=bad), [GOOD_AWB])
        assert [seen for seen in server.seen if "x-injected" in seen.headers] == []
    [record] = result.records
    if bad.startswith(" "):  # httpx strips header whitespace: sent, and answered
        assert record.state is FetchState.ANSWERED
        return
    assert record.state is FetchState.FAILED and record.attempts == 1
    assert "could not be formed" in record.error and TOKEN not in record.error


@pytest.mark.parametrize(
    "expires_at", ["0001-01-01T00:00:00", "9999-12-31T23:59:59", "2001-01-01 00:00:00", None]
)
def test_a_sentinel_token_expiry_gets_the_default_lifetime(expires_at):
    """CUR-BAD-DATES on a login answer: no OverflowError, no token kept for ever."""
    client = VelocityClient(get_flow("velocity"), None, "http://127.0.0.1:9", "u", "p")
    now = datetime.now(UTC)
    token = client.read_login({"token": "velocity-jwt", "expires_at": expires_at}, now)
    assert token.expires_at == now + DEFAULT_TOKEN_LIFETIME
