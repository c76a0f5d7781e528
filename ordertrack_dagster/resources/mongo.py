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


def mongo_client(uri: str) -> MongoClient:
    """A shared client per URI: pymongo pools connections, so one per process is right."""
    with _clients_lock:
        if uri not in _clients:
            _clients[uri] = MongoClient(
                uri, tz_aware=True, event_listeners=[COMMANDS], serverSelectionTimeoutMS=10_000
            )
        return _clients[uri]


class MongoResource(ConfigurableResource):
    """The orders database (MONGODB_URI, MONGODB_DB)."""

    uri: str = Field(description="MONGODB_URI")
    database: str = Field(description="MONGODB_DB")

    def get_database(self) -> Database:
        return mongo_client(self.uri)[self.database]


_indexes_ready: set[tuple[str, str]] = set()


def ensure_indexes(db: Database) -> list[str]:
    """Indexes the tracker relies on; returns warnings instead of failing on odd production data.

    Creating an index that exists is a no-op, so this is safe on a production database.
    """
    key = (db.client.address.__str__(), db.name)
    if key in _indexes_ready:
        return []
    warnings: list[str] = []
    specs = [
        ("orders", [("order_status", ASCENDING), ("last_tracking_time", ASCENDING)], {}),
        ("orders", [("awb_number", ASCENDING)], {}),
        ("orders", [("ordertrack_outbox", ASCENDING)], {"sparse": True}),
        ("orderTracking", [("orderId", ASCENDING)], {"unique": True}),
    ]
    for collection, keys, options in specs:
        try:
            db[collection].create_index(keys, **options)
        except OperationFailure as error:
            warnings.append(f"index {collection}.{keys} not created: {error}")
    _indexes_ready.add(key)
    return warnings
