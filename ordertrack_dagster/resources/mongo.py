"""MongoDB: one pooled client per process, counters of round trips and time waited, and the
bulk write every writer uses (unordered, chunked, isolating what the server rejects)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from dagster import ConfigurableResource
from pydantic import Field
from pymongo import ASCENDING, MongoClient, UpdateOne, monitoring
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, OperationFailure

BULK_CHUNK = 10_000


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


#: Conditions already announced on Slack (`effects/alert_memory.py`), forgotten after 31 days.
ALERTED = "ordertrack_alerted"
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
        (
            "orders",
            [("ordertrack_asked_at", ASCENDING), ("last_tracking_time", ASCENDING)],
            {},
        ),
        ("orders", [("awb_number", ASCENDING)], {}),
        ("orders", [("ordertrack_outbox", ASCENDING)], {"sparse": True}),
        ("orderTracking", [("orderId", ASCENDING)], {"unique": True}),
        (ALERTED, [("first_run", ASCENDING)], {}),
        (ALERTED, [("first_seen", ASCENDING)], {"expireAfterSeconds": 31 * 86_400}),
    ]
    for collection, keys, options in specs:
        try:
            db[collection].create_index(keys, **options)
        except OperationFailure as error:
            warnings.append(f"index {collection}.{keys} not created: {error}")
    _indexes_ready.add(key)
    return warnings


@dataclass
class BulkLog:
    """Round trips and the operations the server rejected, over a series of bulk writes."""

    bulk_calls: int = 0
    rejected: list[str] = field(default_factory=list)


def bulk_update(
    collection: Collection, ops: Sequence[UpdateOne], log: BulkLog, chunk: int = BULK_CHUNK
) -> tuple[int, int, int]:
    """Unordered bulk writes of at most `chunk` operations; (matched, modified, upserted)."""
    totals = (0, 0, 0)
    for start in range(0, len(ops), chunk):
        counts = _bulk_once(collection, list(ops[start : start + chunk]), log)
        totals = (totals[0] + counts[0], totals[1] + counts[1], totals[2] + counts[2])
    return totals


def _bulk_once(
    collection: Collection, ops: list[UpdateOne], report: BulkLog
) -> tuple[int, int, int]:
    """One bulk write; if the server rejects it, retry operation by operation.

    MongoDB reports per-operation errors; some compatible servers fail the whole command
    instead. Either way the good operations land and the bad ones are named.
    """
    if not ops:
        return 0, 0, 0
    report.bulk_calls += 1
    try:
        result = collection.bulk_write(ops, ordered=False)
        return result.matched_count, result.modified_count, result.upserted_count
    except BulkWriteError as error:
        details = error.details
        failed = {item["index"] for item in details.get("writeErrors", [])}
        retry = [op for index, op in enumerate(ops) if index in failed]
        matched, modified, upserted = (
            details.get("nMatched", 0),
            details.get("nModified", 0),
            details.get("nUpserted", 0),
        )
        if len(retry) == len(ops):  # nothing landed: avoid a loop, go one by one
            return _one_by_one(collection, ops, report)
        more = _one_by_one(collection, retry, report)
        return matched + more[0], modified + more[1], upserted + more[2]
    except OperationFailure:
        return _one_by_one(collection, ops, report)


def _one_by_one(
    collection: Collection, ops: list[UpdateOne], report: BulkLog
) -> tuple[int, int, int]:
    matched = modified = upserted = 0
    for op in ops:
        report.bulk_calls += 1
        try:
            result = collection.bulk_write([op], ordered=True)
        except (BulkWriteError, OperationFailure) as error:
            message = getattr(error, "details", None) or str(error)
            if "E11000" in str(message):  # a concurrent upsert won the race: retry as update
                try:
                    result = collection.bulk_write([op], ordered=True)
                except (BulkWriteError, OperationFailure) as again:
                    report.rejected.append(f"{collection.name}: {_describe(op)}: {again}")
                    continue
            else:
                report.rejected.append(f"{collection.name}: {_describe(op)}: {error}")
                continue
        matched += result.matched_count
        modified += result.modified_count
        upserted += result.upserted_count
    return matched, modified, upserted


def _describe(op: UpdateOne) -> str:
    return f"update {op._filter.get('_id') or op._filter.get('orderId')}"
