"""The MongoDB resource's own decisions, each on one function: the server version it refuses,
the client options a connection string overrides and the indexes it asks for."""

from types import SimpleNamespace

import pytest
from pymongo import IndexModel, MongoClient
from pymongo.errors import OperationFailure

from ordertrack_dagster.bench.probe import CommandRecorder
from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.resources.mongo import (
    DatabaseNotReady,
    client_defaults,
    ensure_indexes,
    prepare_database,
)


def test_a_server_older_than_mongodb_5_is_refused_before_anything_is_written():
    """DB-OLD-VERSION: a stand-in for one function only: the database answers `server_info`
    as MongoDB 4.4 would, and has nothing else (so any index creation would fail loudly)."""
    info = {"version": "4.4.29", "versionArray": [4, 4, 29, 0]}
    old = SimpleNamespace(name="orders_db", client=SimpleNamespace(server_info=lambda: info))
    with pytest.raises(DatabaseNotReady, match=r"MongoDB 4\.4 is too old.*5\.0 or newer"):
        prepare_database(old)


def test_the_connection_string_wins_over_the_client_defaults():
    defaults = client_defaults("mongodb://db.example:27017/?directConnection=true")
    assert defaults["w"] == "majority" and defaults["socketTimeoutMS"] == 60_000
    chosen = client_defaults("mongodb://db.example:27017/?w=1&sockettimeoutms=5000")
    assert "w" not in chosen and "socketTimeoutMS" not in chosen
    assert chosen["serverSelectionTimeoutMS"] == 10_000


def test_a_run_on_a_prepared_database_lists_the_indexes_and_creates_none(
    stack: EmbeddedStack, db_name: str
):
    """Each run is a new process: on a database an earlier run prepared it costs one listing
    per collection, not a `createIndexes` per index."""
    clients = []
    try:
        for _ in range(2):  # two processes' clients: the preparation is kept per client
            recorder = CommandRecorder()
            clients.append(MongoClient(stack.env["MONGODB_URI"], event_listeners=[recorder]))
            assert prepare_database(clients[-1][db_name]) == []
        db = clients[0][db_name]
        orders = {tuple(index["key"]) for index in db["orders"].list_indexes()}
        assert ("ordertrack_next_poll_at", "ordertrack_asked_at", "last_tracking_time") in orders
        assert len(orders) == 7  # _id and the tracker's six
        assert db["orderTracking"].index_information()["orderId_1"]["unique"] is True
        names = [name for _, _, name, _ in recorder.commands]
        asked = [name for name in names if name not in ("buildinfo", "buildInfo")]
        assert asked == ["listIndexes"] * 4
    finally:
        clients[0].drop_database(db_name)
        for client in clients:
            client.close()


def test_a_database_dropped_and_seeded_anew_is_prepared_again_when_asked(
    stack: EmbeddedStack, db_name: str
):
    """A process prepares a database once; the benchmark, which drops and seeds its databases
    under the same names, asks `again` so each one has its indexes before its first run."""
    with MongoClient(stack.env["MONGODB_URI"]) as client:
        db = client[db_name]
        try:
            prepare_database(db)
            client.drop_database(db_name)
            db["orders"].insert_one({"order_id": "1"})
            prepare_database(db)  # remembered: nothing asked
            assert len(list(db["orders"].list_indexes())) == 1
            prepare_database(db, again=True)
            assert len(list(db["orders"].list_indexes())) == 7
        finally:
            client.drop_database(db_name)


def test_an_index_on_the_same_keys_with_other_options_is_asked_for_and_refused(db):
    """An existing index differing in an option the tracker relies on is not taken for the one
    wanted: MongoDB's own conflict error says so (prepare_database turns it into a warning)."""
    ensure_indexes(db["x"], [IndexModel([("a", 1)]), IndexModel([("b", 1)])])
    ensure_indexes(db["x"], [IndexModel([("a", 1)])])  # present: nothing to do
    with pytest.raises(OperationFailure, match="a_1"):
        ensure_indexes(db["x"], [IndexModel([("a", 1)], sparse=True)])
    assert len(db["x"].index_information()) == 3
