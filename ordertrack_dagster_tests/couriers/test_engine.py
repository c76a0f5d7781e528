"""The fetch engine every courier shares: retries, isolation, pauses, budgets, and the shared
answer-reading helpers. Run against the simulator through the Delhivery B2C client (the
engine's behaviour does not depend on the courier)."""

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pymongo.errors import AutoReconnect

from ordertrack_dagster.couriers import engine
from ordertrack_dagster.couriers.answers import (
    decode_json,
    first_entry,
    newest_activity_time,
    parse_courier_time,
    read_status,
)
from ordertrack_dagster.couriers.engine import MAX_ATTEMPTS, FetchOptions
from ordertrack_dagster.couriers.failures import BatchFailure
from ordertrack_dagster.couriers.pauses import parse_retry_after
from ordertrack_dagster.flows import RateBudget
from ordertrack_dagster.records import FetchState, Outcome
from ordertrack_dagster.resources.state import SharedState
from ordertrack_dagster.statuses import Canonical as C
from ordertrack_dagster_tests.helpers import (
    courier_client,
    records_by_key,
    register_shipments,
    run_fetch,
    simulator_counts,
)

FLOW = "delhivery_b2c"
SCOPE = "delhivery_express"
ONE_AT_A_TIME = {"batch_size": 1, "concurrency": 1}
ZERO = timedelta(0)


@pytest.fixture
def state(db):
    return SharedState(db)


def client(stack, state, **flow_changes):
    return courier_client(FLOW, stack.env, state, flow_changes=flow_changes)


def _close(actual: datetime | None, expected: datetime, seconds: float = 5.0) -> bool:
    return actual is not None and abs(actual - expected) < timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "kind", ["http_500", "http_502", "http_503", "html", "xml", "truncated_json", "empty"]
)
def test_a_bad_answer_is_retried_then_read(stack, state, kind):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit"])
    stack.simulator.inject_fault(FLOW, kind)
    result = run_fetch(client(stack, state), keys)
    record = records_by_key(result)[keys[0]]
    assert (record.state, record.attempts, record.http_status) == (FetchState.ANSWERED, 2, 200)
    assert result.stats.retries == 1


def test_a_timeout_is_retried(stack, state):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit"])
    stack.simulator.inject_fault(FLOW, "timeout", seconds=1.5)
    result = run_fetch(client(stack, state, timeout_seconds=0.4), keys)
    record = records_by_key(result)[keys[0]]
    assert (record.state, record.attempts) == (FetchState.ANSWERED, 2)


def test_a_batch_that_keeps_failing_fails_alone(stack, state):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit", "delivered"])
    stack.simulator.inject_fault(FLOW, "http_500", count=MAX_ATTEMPTS)
    result = run_fetch(client(stack, state, **ONE_AT_A_TIME), keys)
    failed, answered = (records_by_key(result)[key] for key in keys)
    assert (failed.state, failed.attempts, failed.http_status) == (FetchState.FAILED, 3, 500)
    assert failed.error == "HTTP 500" and failed.raw is None
    assert answered.state == FetchState.ANSWERED
    assert result.stats.batches_failed == 1


@pytest.mark.parametrize("retry_after_format", ["seconds", "unix", "http_date"])
def test_429_pauses_the_courier_for_this_and_later_runs(stack, state, retry_after_format):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit"] * 3)
    stack.simulator.inject_fault(
        FLOW, "rate_limited", retry_after=600, retry_after_format=retry_after_format
    )
    before = simulator_counts(stack.simulator, FLOW)["requests"]
    result = run_fetch(client(stack, state, **ONE_AT_A_TIME), keys)
    records = [records_by_key(result)[key] for key in keys]
    assert {record.state for record in records} == {FetchState.DEFERRED}
    assert records[0].http_status == 429 and "rate limited" in records[0].error
    assert "paused until" in records[1].error
    resume_at = state.paused_until(SCOPE)
    assert _close(resume_at, datetime.now(UTC) + timedelta(seconds=600))
    assert _close(result.stats.paused_until, resume_at, seconds=0.01)
    assert simulator_counts(stack.simulator, FLOW)["requests"] == before + 1

    later = run_fetch(client(stack, state), keys)  # a later run, another process
    assert {record.state for record in later.records} == {FetchState.DEFERRED}
    assert simulator_counts(stack.simulator, FLOW)["requests"] == before + 1


def test_a_short_retry_after_is_waited_out_inside_the_run(stack, state):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit", "delivered"])
    stack.simulator.inject_fault(FLOW, "rate_limited", retry_after=1)
    result = run_fetch(client(stack, state, **ONE_AT_A_TIME), keys)
    limited, later = (records_by_key(result)[key] for key in keys)
    assert limited.state == FetchState.DEFERRED
    assert later.state == FetchState.ANSWERED


def test_delhivery_403_is_a_firewall_block_of_eight_minutes(stack, state):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit", "delivered"])
    stack.simulator.inject_fault(FLOW, "forbidden")
    result = run_fetch(client(stack, state, **ONE_AT_A_TIME), keys)
    assert {record.state for record in result.records} == {FetchState.DEFERRED}
    assert records_by_key(result)[keys[0]].http_status == 403
    assert _close(state.paused_until(SCOPE), datetime.now(UTC) + timedelta(minutes=8))


def test_the_request_budget_defers_what_it_cannot_cover(stack, state):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit", "delivered"])
    budget = RateBudget(requests=1, window_seconds=300)
    result = run_fetch(client(stack, state, default_rate_budget=budget, **ONE_AT_A_TIME), keys)
    asked, deferred = (records_by_key(result)[key] for key in keys)
    assert asked.state == FetchState.ANSWERED
    assert deferred.state == FetchState.DEFERRED and "budget" in deferred.error
    assert state.requests_in_window(SCOPE, budget) == 1


@pytest.mark.parametrize(
    ("time_box_seconds", "second_key"),
    [(60, FetchState.ANSWERED), (1, FetchState.DEFERRED)],
)
def test_a_run_waits_for_its_budget_within_its_time_box(
    stack, state, monkeypatch, time_box_seconds, second_key
):
    """A budget that frees before the run's time box closes is waited for, however long
    beyond the wait a courier pause gets (shortened here to 0.5 s, the budget's window 3 s)."""
    monkeypatch.setattr(engine, "MAX_INLINE_WAIT_SECONDS", 0.5)
    keys = register_shipments(stack.simulator, FLOW, ["in_transit", "delivered"])
    budget = RateBudget(requests=1, window_seconds=3)
    options = FetchOptions(time_box=timedelta(seconds=time_box_seconds))
    result = asyncio.run(
        client(stack, state, default_rate_budget=budget, **ONE_AT_A_TIME).fetch(keys, options)
    )
    first, second = (records_by_key(result)[key] for key in keys)
    assert (first.state, second.state) == (FetchState.ANSWERED, second_key)
    if second_key is FetchState.DEFERRED:
        assert "budget frees only after" in second.error


class _SettlementLost:
    """The budget's collection, with every settlement lost on its way to the server."""

    def __init__(self, collection):
        self._collection = collection

    def __getattr__(self, name):
        return getattr(self._collection, name)

    def update_one(self, *args, **kwargs):
        raise AutoReconnect("MongoDB went away")


def test_a_failed_last_settlement_does_not_fail_a_finished_fetch(stack, state, monkeypatch):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit", "delivered"])
    budget = RateBudget(requests=100, window_seconds=300)
    stored_window = state.budget_window

    def settlement_lost(scope):
        window = stored_window(scope)
        window._collection = _SettlementLost(window._collection)
        return window

    monkeypatch.setattr(state, "budget_window", settlement_lost)
    result = run_fetch(client(stack, state, default_rate_budget=budget), keys)
    assert {record.state for record in result.records} == {FetchState.ANSWERED}
    assert "went away" in result.stats.budget_unsettled
    # what was reserved stays counted until it leaves the window: too much, never too little
    assert state.requests_in_window(SCOPE, budget) >= result.stats.requests


class _ReservationWatched:
    """The budget's collection, whose reservations first wait (up to `patience` seconds)
    for the fetch's event loop to show it still runs, and note whether it did."""

    def __init__(self, collection, patience: float = 10.0):
        self._collection = collection
        self._patience = patience
        self.reserving = threading.Event()  # a reservation is waiting on the loop
        self.loop_ran = threading.Event()  # the loop answered while it waited
        self.loop_ran_every_time: list[bool] = []

    def __getattr__(self, name):
        return getattr(self._collection, name)

    def find_one_and_update(self, *args, **kwargs):
        self.loop_ran.clear()
        self.reserving.set()
        self.loop_ran_every_time.append(self.loop_ran.wait(self._patience))
        self.reserving.clear()
        return self._collection.find_one_and_update(*args, **kwargs)


def test_a_budget_reservation_leaves_the_fetch_loop_running(stack, state, monkeypatch):
    """A reservation waits on MongoDB (behind the run's streamed writes, say): the fetch's
    event loop goes on meanwhile, instead of every worker and answer waiting with it."""
    keys = register_shipments(stack.simulator, FLOW, ["in_transit"] * 6)
    budget = RateBudget(requests=100, window_seconds=300)
    stored_window = state.budget_window
    watched: list[_ReservationWatched] = []

    def watched_window(scope):
        window = stored_window(scope)
        watched.append(_ReservationWatched(window._collection))
        window._collection = watched[-1]
        return window

    async def fetch_and_watch_the_loop():
        fetch = asyncio.create_task(
            client(stack, state, default_rate_budget=budget, **ONE_AT_A_TIME).fetch(keys)
        )
        while not fetch.done():  # the loop's heartbeat, seen by a waiting reservation
            if watched and watched[0].reserving.is_set():
                watched[0].loop_ran.set()
            await asyncio.sleep(0.01)
        return fetch.result()

    monkeypatch.setattr(state, "budget_window", watched_window)
    result = asyncio.run(fetch_and_watch_the_loop())
    assert {record.state for record in result.records} == {FetchState.ANSWERED}
    assert watched[0].loop_ran_every_time and all(watched[0].loop_ran_every_time)


def test_unknown_keys_are_not_answered_with_the_http_status_kept(stack, state):
    known, unknown = register_shipments(stack.simulator, FLOW, ["in_transit", None])
    mixed = records_by_key(run_fetch(client(stack, state), [known, unknown]))
    assert mixed[known].state == FetchState.ANSWERED
    assert mixed[unknown].state == FetchState.NOT_ANSWERED
    alone = records_by_key(run_fetch(client(stack, state), [unknown]))[unknown]
    assert (alone.state, alone.http_status) == (FetchState.NOT_ANSWERED, 200)
    assert "No such waybill" in alone.error


def test_a_refused_connection_fails_the_batch_after_retries(state):
    nowhere = "http://127.0.0.1:9/"  # the discard port: nothing listens
    env = {"DELHIVERY_URL": nowhere, "DELHIVERY_FALLBACK_URL": nowhere}
    dead = courier_client(FLOW, env | {"DELHIVERY_AUTH_TOKEN_B2C": "t"}, state)
    record = run_fetch(dead, ["26805710004060"]).records[0]
    assert (record.state, record.attempts) == (FetchState.FAILED, MAX_ATTEMPTS)
    assert "connection failed" in record.error


# -- pure helpers -----------------------------------------------------------------------

NOW = datetime(2024, 9, 22, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("120", NOW + timedelta(seconds=120)),
        ("1726986000", NOW + timedelta(minutes=20)),  # a Unix time
        ("Sun, 22 Sep 2024 06:10:00 GMT", NOW + timedelta(minutes=10)),
        (None, NOW + timedelta(minutes=5)),
        ("soon", NOW + timedelta(minutes=5)),
        ("-3", NOW),
    ],
)
def test_retry_after_forms(value, expected):
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2024-09-21T17:22:31.5", datetime(2024, 9, 21, 11, 52, 31, 500000, tzinfo=UTC)),
        ("2022-07-19 11:37:00", datetime(2022, 7, 19, 6, 7, tzinfo=UTC)),
        ("2025-07-30T17:39:29+05:30", datetime(2025, 7, 30, 12, 9, 29, tzinfo=UTC)),
        ("2024-09-21T08:00:00Z", datetime(2024, 9, 21, 8, 0, tzinfo=UTC)),
        ("", None),
        ("yesterday", None),
        (1727000000, None),
    ],
)
def test_courier_times_are_india_time_unless_zoned(value, expected):
    assert parse_courier_time(value) == expected


def test_newest_activity_time_takes_the_latest_readable_date():
    activities = [
        {"date": "2022-07-19 08:57:00"},
        {"date": "2022-07-19 11:37:00"},
        {"date": "NA"},
        "junk",
    ]
    assert newest_activity_time(activities) == datetime(2022, 7, 19, 6, 7, tzinfo=UTC)
    assert newest_activity_time([]) is None
    assert newest_activity_time(None) is None


@pytest.mark.parametrize("value", [None, [], ["x"], {}, "text"])
def test_first_entry_is_empty_without_a_list_of_objects(value):
    assert first_entry(value) == {}


TABLE = {"DELIVERED": C.DELIVERED, "MANIFESTED": None}


def test_read_status_takes_the_first_candidate_that_maps():
    reading = read_status([("Misrouted", TABLE), ("Delivered", TABLE)], NOW)
    assert (reading.outcome, reading.status, reading.courier_status) == (
        Outcome.MAPPED,
        C.DELIVERED,
        "Delivered",
    )
    assert reading.event_time == NOW


def test_read_status_no_change_is_a_mapping_too():
    reading = read_status([(None, TABLE), ("manifested", TABLE), ("Delivered", TABLE)], None)
    assert (reading.outcome, reading.courier_status) == (Outcome.NO_CHANGE, "manifested")


def test_read_status_unmapped_names_every_raw_value():
    reading = read_status([("Misrouted", TABLE), (39, TABLE), ("", TABLE)], NOW)
    assert reading.outcome == Outcome.UNMAPPED and reading.status is None
    assert reading.courier_status == "Misrouted"
    assert "'Misrouted'" in reading.alert and "'39'" in reading.alert


def test_read_status_without_any_status_is_malformed():
    assert read_status([(None, TABLE), ("  ", TABLE)], NOW).outcome == Outcome.FAILED


def test_a_response_that_is_not_json_is_a_retryable_failure():
    with pytest.raises(BatchFailure) as failure:
        decode_json(httpx.Response(200, text="<html>maintenance</html>"))
    assert failure.value.retryable and failure.value.http_status == 200


def test_finished_records_are_handed_over_while_the_fetch_goes_on(stack, state):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit"] * 6)
    client = courier_client(FLOW, stack.env, state, flow_changes=ONE_AT_A_TIME)
    chunks = []
    result = asyncio.run(
        client.fetch(keys, FetchOptions(stream=lambda r: chunks.append(list(r)), stream_every=ZERO))
    )
    assert len(chunks) >= 2  # one worker: a hand-over after each request but the last
    streamed = [r.tracking_key for chunk in chunks for r in chunk]
    assert streamed == [r.tracking_key for r in result.records][: len(streamed)]
    assert len(streamed) >= 5


def test_what_was_answered_is_handed_over_while_the_fetch_waits_for_its_budget(
    stack, state, monkeypatch
):
    """At Delhivery's real window a run sends its 700 requests in seconds, then waits minutes
    in its time box for the window to free: the answers it has are handed over (written)
    before that wait, not after it, however long the streaming interval; and the hand-over
    runs beside the wait, so one that outlasts it (a burst's writes take the embedded
    database minutes) does not hold the next request (shortened here: the long wait 1 s, the
    window 3 s)."""
    monkeypatch.setattr(engine, "HAND_OVER_BEFORE_WAIT_SECONDS", 1.0)
    keys = register_shipments(stack.simulator, FLOW, ["in_transit"] * 3)
    budget = RateBudget(requests=2, window_seconds=3)
    asked_before = simulator_counts(stack.simulator, FLOW)["requests"]

    def asked() -> int:
        return simulator_counts(stack.simulator, FLOW)["requests"] - asked_before

    hand_overs = []  # (records handed over, requests the courier had seen then, and at its end)

    def stream(records):
        started = asked()
        deadline = time.monotonic() + 60  # a slow write: it lasts until the third request
        while asked() < len(keys) and time.monotonic() < deadline:
            time.sleep(0.1)
        hand_overs.append((len(records), started, asked()))

    options = FetchOptions(
        stream=stream, stream_every=timedelta(minutes=1), time_box=timedelta(seconds=120)
    )
    fetcher = client(stack, state, default_rate_budget=budget, **ONE_AT_A_TIME)
    result = asyncio.run(fetcher.fetch(keys, options))
    assert {record.state for record in result.records} == {FetchState.ANSWERED}
    # the window's two answers, handed over before the third request, which went out meanwhile
    assert hand_overs == [(2, 2, 3)]


def test_what_was_answered_is_handed_over_while_the_fetch_waits_out_a_courier_pause(
    stack, state, monkeypatch
):
    """A rate limit met mid-fetch (a 429 with a short Retry-After) makes the next request wait
    for the pause inside the run: what the fetch has is handed over before that wait, as
    before a wait for the budget (shortened here: the long wait 0.5 s, the pause 2 s, one
    request a second)."""
    monkeypatch.setattr(engine, "HAND_OVER_BEFORE_WAIT_SECONDS", 0.5)
    keys = register_shipments(stack.simulator, FLOW, ["in_transit"] * 3)
    asked_before = simulator_counts(stack.simulator, FLOW)["requests"]

    def asked() -> int:
        return simulator_counts(stack.simulator, FLOW)["requests"] - asked_before

    def limit_the_second_request() -> None:
        deadline = time.monotonic() + 30
        while asked() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        stack.simulator.inject_fault(FLOW, "rate_limited", retry_after=2)

    hand_overs = []  # (keys handed over, requests the courier had seen then)
    options = FetchOptions(
        stream=lambda records: hand_overs.append(([r.tracking_key for r in records], asked())),
        stream_every=timedelta(minutes=1),
    )
    fetcher = client(stack, state, pause_seconds=1, **ONE_AT_A_TIME)
    limiter = threading.Thread(target=limit_the_second_request)
    limiter.start()
    try:
        result = asyncio.run(fetcher.fetch(keys, options))
    finally:
        limiter.join()
    states = [records_by_key(result)[key].state for key in keys]
    assert states == [FetchState.ANSWERED, FetchState.DEFERRED, FetchState.ANSWERED]
    # what the first two requests got, handed over during the pause: before the third went out
    assert hand_overs[0] == (keys[:2], 2)


def test_a_fetch_shorter_than_the_streaming_interval_streams_nothing(stack, state):
    keys = register_shipments(stack.simulator, FLOW, ["in_transit"] * 3)
    client = courier_client(FLOW, stack.env, state, flow_changes=ONE_AT_A_TIME)
    chunks = []
    once_a_minute = FetchOptions(stream=chunks.append, stream_every=timedelta(minutes=1))
    asyncio.run(client.fetch(keys, once_a_minute))
    assert chunks == []
