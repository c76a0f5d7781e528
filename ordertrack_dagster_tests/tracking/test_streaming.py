"""Statuses written while the fetch goes on (tracking/streaming.py), against the local
servers: the fetch writes what it kept, the write step writes only the rest, and the run's
table and figures tell the whole run."""

import logging

import pandas as pd
import pytest
from dagster import DagsterInstance, ReexecutionOptions, execute_job, reconstructable
from pymongo import MongoClient, monitoring
from pymongo.errors import AutoReconnect

from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.records import FetchRecord, FetchState
from ordertrack_dagster.resources.mongo import STREAMED
from ordertrack_dagster.resources.s3 import ParquetHistoryIOManager
from ordertrack_dagster.tables import (
    ORDER_STATUS_WRITES,
    PENDING_ORDERS,
    RAW_COURIER_RESPONSES,
    STATUS_UPDATES,
)
from ordertrack_dagster.tracking import streaming, writer
from ordertrack_dagster.tracking.metadata import Table
from ordertrack_dagster.tracking.steps import (
    ask_courier,
    map_answers,
    select_pending,
)
from ordertrack_dagster.tracking.streaming import STREAM_EVERY_ENV
from ordertrack_dagster.tracking.writer import write_statuses
from ordertrack_dagster_tests.faults.invariants import invariant_i
from ordertrack_dagster_tests.helpers import courier_resource, load_definitions, seed_orders

LOG = logging.getLogger(__name__)
FLOW = get_flow("delhivery_b2b")  # one key per request


@pytest.fixture
def streaming_each_request(monkeypatch):
    """One worker, answers written after every request."""
    monkeypatch.setenv(STREAM_EVERY_ENV, "0")
    monkeypatch.setenv("B2B_TRACKING_WORKERS", "1")


def test_a_long_fetch_writes_as_it_goes_and_the_write_step_writes_the_rest(
    stack, stack_env, db, streaming_each_request
):
    moves = ["delivered", "in_transit", "rto_in_transit", "lost", None, "in_transit"]
    seeded = seed_orders(db, stack.simulator, FLOW.key, moves)
    pending = select_pending(db, FLOW, LOG).frame
    raw = ask_courier(
        db, pending, FLOW, courier_resource(FLOW.key, stack_env), force=False, run_id="r", log=LOG
    )
    streamed = raw.metadata["orders_written_while_fetching"]
    assert 3 <= streamed <= 5  # the answers of every request but the last few
    polled = db["orders"].count_documents({"last_tracking_time": {"$exists": True}})
    assert polled == streamed

    written = write_statuses(db, map_answers(db, pending, raw.frame, FLOW).frame, FLOW, "r", LOG)
    actions = dict(zip(written.frame["tracking_key"], written.frame["action"], strict=True))
    assert sorted(actions.values()) == ["status_changed"] * 5 + ["untouched"]
    assert written.metadata["updated"] == 5
    # the streamed writes' counters included: 5 moves, and the unanswered order's asked time
    assert written.metadata["orders_modified"] == 6
    assert written.metadata["rejected_updates"] == 0
    assert db["orders"].count_documents({"last_tracking_time": {"$exists": True}}) == 5
    # kept until the asset has stored this table (then let go: the Dagster tests below)
    assert db[STREAMED].count_documents({"run_id": "r"}) > 0
    invariant_i(db, [order.oid for order in seeded])


def test_each_part_of_a_streamed_write_is_recorded_as_soon_as_it_is_written(
    stack, stack_env, db, monkeypatch
):
    pending, raw, records = _fetched_unstreamed(stack, stack_env, db, monkeypatch, orders=5)
    applied = writer.apply_plan

    def third_part_lost(*args):
        parts.append(len(parts) + 1)
        if len(parts) == 3:
            raise AutoReconnect("MongoDB went away")
        return applied(*args)

    parts: list[int] = []
    monkeypatch.setattr(writer, "BULK_CHUNK", 2)
    monkeypatch.setattr(writer, "apply_plan", third_part_lost)
    stream = streaming.StreamedWriter(db, FLOW, pending, "r", LOG, asking=len(records))
    stream(records)  # never raises: what it could not write, the write step writes
    assert stream.written == 4
    assert [len(doc["written"]) for doc in db[STREAMED].find({"run_id": "r"})] == [2, 2]

    monkeypatch.setattr(writer, "apply_plan", applied)
    written = write_statuses(db, map_answers(db, pending, raw.frame, FLOW).frame, FLOW, "r", LOG)
    assert list(written.frame["action"]) == ["status_changed"] * 5  # none seen as refused
    assert written.metadata["updated"] == 5


def test_a_large_hand_over_is_mapped_and_written_a_bulk_at_a_time(
    stack, stack_env, db, monkeypatch
):
    """A fetch about to wait for its budget hands over all it got (about 35,000 answers at
    Delhivery's real window): mapped and written a bulk's worth at a time, so what a run
    holds while writing does not grow with the hand-over."""
    pending, _, records = _fetched_unstreamed(stack, stack_env, db, monkeypatch, orders=5)
    interpret = streaming.interpret_answers

    def counted(orders, raw, *args):
        mapped.append(len(raw))
        return interpret(orders, raw, *args)

    mapped: list[int] = []
    monkeypatch.setattr(streaming, "BULK_CHUNK", 2)
    monkeypatch.setattr(streaming, "interpret_answers", counted)
    stream = streaming.StreamedWriter(db, FLOW, pending, "r", LOG, asking=len(records))
    stream(records)
    assert mapped == [2, 2, 1]
    assert stream.written == 5
    assert [len(doc["written"]) for doc in db[STREAMED].find({"run_id": "r"})] == [2, 2, 1]


def _fetched_unstreamed(
    stack, stack_env, db, monkeypatch, orders: int
) -> tuple[pd.DataFrame, Table, list[FetchRecord]]:
    """`orders` delivered orders selected and asked about by a fetch that streams nothing
    itself: the selection, the fetch's table and its records, for a test to hand over."""
    seed_orders(db, stack.simulator, FLOW.key, ["delivered"] * orders)
    monkeypatch.setenv(STREAM_EVERY_ENV, "10800")
    pending = select_pending(db, FLOW, LOG).frame
    raw = ask_courier(
        db, pending, FLOW, courier_resource(FLOW.key, stack_env), force=False, run_id="r", log=LOG
    )
    return pending, raw, _records(raw.frame)


def _records(raw: pd.DataFrame) -> list[FetchRecord]:
    """The fetch's records back from its table, as the fetch hands them over."""
    return [
        FetchRecord(**(fields_ | {"state": FetchState(fields_["state"])}))
        for fields_ in raw.drop(columns=["flow", "run_id"]).to_dict("records")
    ]


class _Aggregations(monitoring.CommandListener):
    """The aggregations a client sent to `orders`, as the database received them."""

    def __init__(self) -> None:
        self.pipelines: list[list[dict]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "aggregate" and event.command["aggregate"] == "orders":
            self.pipelines.append(event.command["pipeline"])

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_the_shared_keys_are_read_once_per_run_not_per_hand_over(stack, stack_env, db, monkeypatch):
    """The shared-key query groups every live order: a run's streamed writes read it at their
    first hand-over and reuse it for a minute, however many hand-overs the fetch makes."""
    pending, _, records = _fetched_unstreamed(stack, stack_env, db, monkeypatch, orders=3)
    aggregations = _Aggregations()
    with MongoClient(stack_env["MONGODB_URI"], tz_aware=True, event_listeners=[aggregations]) as c:
        stream = streaming.StreamedWriter(c[db.name], FLOW, pending, "r", LOG, asking=3)
        for record in records:  # one hand-over per answer
            stream([record])
    assert stream.written == 3
    assert len(aggregations.pipelines) == 1
    assert "$group" in aggregations.pipelines[0][1]


def test_a_slow_reading_of_the_shared_keys_is_kept_ten_times_its_own_time():
    """A minute on MongoDB, where the group takes well under a second; on a server where it
    takes 30 s it is kept 5 minutes, rather than read again at every hand-over (each part of a
    large run writes for longer than a minute there), so it never costs more than a tenth of
    the write."""
    assert streaming.holders_kept_for(0.3) == 60
    assert streaming.holders_kept_for(6) == 60
    assert streaming.holders_kept_for(30) == 300


def tracking_job():
    """The code location's tracking job, rebuilt in each step process."""
    return load_definitions().resolve_job_def("tracking_job")


def _write_metadata(result) -> dict:
    [write] = [
        event.step_materialization_data.materialization.metadata
        for event in result.all_events
        if event.is_step_materialization and event.step_key == "order_status_writes"
    ]
    return write


def _table_lost(monkeypatch) -> None:
    """The write step fails at its very end: storing its table."""
    store = ParquetHistoryIOManager.handle_output

    def table_lost(self, context, obj):
        if context.asset_key == ORDER_STATUS_WRITES:
            raise ConnectionError("the history store went away")
        return store(self, context, obj)

    monkeypatch.setattr(ParquetHistoryIOManager, "handle_output", table_lost)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("again", "streamed"),
    [
        ("re-execution from failure", "after every request"),
        ("re-execution from failure", "never"),  # the write step wrote them all itself
        ("the write alone", "after every request"),
        ("the write alone after a later fetch", "after every request"),
        ("the mapping and write alone", "after every request"),
    ],
)
def test_a_later_write_reports_what_the_failed_runs_writes_did(
    stack, stack_env, db, tmp_path, monkeypatch, again, streamed
):
    monkeypatch.setenv(STREAM_EVERY_ENV, "0" if streamed == "after every request" else "10800")
    monkeypatch.setenv("B2B_TRACKING_WORKERS", "1")
    seed_orders(db, stack.simulator, FLOW.key, ["delivered"] * 4)
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        job = reconstructable(tracking_job)
        tags = {"dagster/partition": FLOW.key}
        with monkeypatch.context() as failing:
            _table_lost(failing)
            with execute_job(job, instance, tags=tags, raise_on_error=False) as first:
                assert not first.success
        assert db[STREAMED].count_documents({"run_id": first.run_id}) > 0
        if again == "re-execution from failure":
            from_failure = ReexecutionOptions.from_failure(first.run_id, instance)
            options = {"reexecution_options": from_failure}
        elif again == "the mapping and write alone":  # its input: the failed run's answers
            options = {"asset_selection": [STATUS_UPDATES, ORDER_STATUS_WRITES]}
        else:  # a new run of order_status_writes, its input the last status_updates
            options = {"asset_selection": [ORDER_STATUS_WRITES]}
        if again == "the write alone after a later fetch":  # not the fetch of that input
            fetch_only = [PENDING_ORDERS, RAW_COURIER_RESPONSES]
            with execute_job(job, instance, tags=tags, asset_selection=fetch_only) as fetch:
                assert fetch.success
        with execute_job(job, instance, tags=tags, **options) as second:
            assert second.success
            write = _write_metadata(second)
    # the failed run's recorded decisions were found (and let go): nothing seen as refused
    assert db[STREAMED].count_documents({}) == 0
    assert write["updated"].value == 4


class _DeleteFails:
    """A database whose deletes never reach the server."""

    def __getitem__(self, name):
        return self

    def delete_many(self, *args, **kwargs):
        raise AutoReconnect("MongoDB went away")


def test_letting_go_of_a_runs_decisions_never_fails_the_write(caplog):
    with caplog.at_level(logging.WARNING):
        writer.discard(_DeleteFails(), "r", LOG)
    assert "expire" in caplog.text
