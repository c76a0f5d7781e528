"""MongoDB: one pooled client per process, plus counters of round trips and time waited."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from dagster import ConfigurableResource
from pydantic import Field
from pymongo import ASCENDING, MongoClient, monitoring
from pymongo.database import Database
from pymongo.errors import OperationFailure


@dataclass
class CommandTally:
    """Round trips and seconds waited, cumulative for the process."""

    commands: int = 0
    seconds: float = 0.0

    def since(self, earlier: CommandTally) -> CommandTally:
        return CommandTally(self.commands - earlier.commands, self.seconds - earlier.seconds)


class _CommandCounter(monitoring.CommandListener):
    """Counts every command sent (pymongo's command monitoring), for metadata and the bench."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tally = CommandTally()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._add(event.duration_micros)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._add(event.duration_micros)

    def _add(self, micros: int) -> None:
        with self._lock:
            self.tally = CommandTally(self.tally.commands + 1, self.tally.seconds + micros / 1e6)

    def snapshot(self) -> CommandTally:
        with self._lock:
            return CommandTally(self.tally.commands, self.tally.seconds)


COMMANDS = _CommandCounter()
_clients: dict[str, MongoClient] = {}
_clients_lock = threading.Lock()


#: The write concern of every write (a URI's own `w=` option wins): a status write gates
#: side effects, so it counts only once a majority of the replica set holds it; a write that
#: is not acknowledged within the time-out raises instead of being counted.
WRITE_CONCERN = {"w": "majority", "wtimeoutMS": 30_000}


def mongo_client(uri: str) -> MongoClient:
    """A shared client per URI: pymongo pools connections, so one per process is right."""
    with _clients_lock:
        if uri not in _clients:
            _clients[uri] = MongoClient(
                uri,
                tz_aware=True,
                event_listeners=[COMMANDS],
                serverSelectionTimeoutMS=10_000,
                **WRITE_CONCERN,
            )
        return _clients[uri]


class MongoResource(ConfigurableResource):
    """The orders database (MONGODB_URI, MONGODB_DB)."""

    uri: str = Field(description="MONGODB_URI")
    database: str = Field(description="MONGODB_DB")

    def get_database(self) -> Database:
        return mongo_client(self.uri)[self.database]


#: `$getField` (the History guard of the write path) needs MongoDB 5.0.
MINIMUM_SERVER_VERSION = (5, 0)
_prepared: set[tuple[int, str]] = set()


class DatabaseNotReady(RuntimeError):
    """The database cannot give the guarantees the write path relies on: nothing is written."""


def server_version(db: Database) -> tuple[int, ...]:
    info = db.client.server_info()
    numbers = info.get("versionArray") or str(info.get("version", "0")).split(".")
    return tuple(int(part) for part in list(numbers)[:2])


def prepare_database(db: Database) -> list[str]:
    """Check the server version and create the indexes the tracker relies on.

    Refuses (DatabaseNotReady) a server older than MongoDB 5.0, and a database where the
    unique `orderTracking.orderId` index cannot be built: without it two runs could each
    create an orderTracking for one order. The other indexes only speed queries up, so a
    failure there is a warning. Creating an index that exists is a no-op.
    """
    key = (id(db.client), db.name)
    if key in _prepared:
        return []
    version = server_version(db)
    if version < MINIMUM_SERVER_VERSION:
        raise DatabaseNotReady(
            f"MongoDB {'.'.join(map(str, version))} is too old: ordertrack needs MongoDB "
            f"{'.'.join(map(str, MINIMUM_SERVER_VERSION))} or newer ($getField); nothing written"
        )
    try:
        db["orderTracking"].create_index([("orderId", ASCENDING)], unique=True)
    except OperationFailure as error:
        raise DatabaseNotReady(
            "the unique index orderTracking.orderId cannot be built, so one orderTracking per "
            f"order cannot be guaranteed; nothing written. Remove the duplicates first: {error}"
        ) from None
    warnings: list[str] = []
    specs = [
        ("orders", [("order_status", ASCENDING), ("last_tracking_time", ASCENDING)], {}),
        ("orders", [("awb_number", ASCENDING)], {}),
        ("orders", [("ordertrack_outbox", ASCENDING)], {"sparse": True}),
        ("orders", [("ordertrack_tracking_due", ASCENDING)], {"sparse": True}),
    ]
    for collection, keys, options in specs:
        try:
            db[collection].create_index(keys, **options)
        except OperationFailure as error:
            warnings.append(f"index {collection}.{keys} not created: {error}")
    _prepared.add(key)
    return warnings
