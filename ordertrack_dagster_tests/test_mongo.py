"""The MongoDB resource's own decisions, each on one function: the server version it refuses
and the client options a connection string overrides."""

from types import SimpleNamespace

import pytest

from ordertrack_dagster.resources.mongo import DatabaseNotReady, client_defaults, prepare_database


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
