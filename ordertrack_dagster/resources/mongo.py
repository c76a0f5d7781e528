"""MongoDB: one pooled client per process, counters of round trips and time waited, and the
bulk write every writer uses (unordered, chunked, isolating what the server rejects)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field
from pymongo import ASCENDING, IndexModel, MongoClient, UpdateOne, monitoring
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    OperationFailure,
    WriteConcernError,
)
from pymongo.uri_parser import parse_uri

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


#: The write concern of every write: a status write gates side effects, so it counts only
#: once a majority of the replica set holds it; a write that is not acknowledged within the
#: time-out raises instead of being counted.
WRITE_CONCERN = {"w": "majority", "wtimeoutMS": 30_000}
#: How long the client waits, so a MongoDB that stalls fails the run instead of holding it
#: for ever (pymongo waits on a socket without limit by default): finding a usable server
#: (10 s), opening a connection (10 s), and any one answer (60 s: twice the write concern's
#: time-out, so a slow majority acknowledgement is reported by the server first). A stalled
#: run therefore fails within about two minutes: one answer's wait, then each remaining call
#: finds no server within 10 s (RELIABILITY.md, DB-SLOW, shows it with 1.5 s time-outs).
#: `timeoutMS` is deliberately not set: it would bound the whole life of a cursor, and a long
#: selection read over many batches is healthy.
TIMEOUTS = {
    "serverSelectionTimeoutMS": 10_000,
    "connectTimeoutMS": 10_000,
    "socketTimeoutMS": 60_000,
}


def client_defaults(uri: str) -> dict[str, Any]:
    """The options above, less those the URI sets itself: pymongo lets keyword arguments
    override the URI, and a deployment's own `w=` or time-outs must win."""
    given = {name.lower() for name in parse_uri(uri)["options"]}
    return {
        name: value
        for name, value in {**WRITE_CONCERN, **TIMEOUTS}.items()
        if name.lower() not in given
    }


def mongo_client(uri: str) -> MongoClient:
    """A shared client per URI: pymongo pools connections, so one per process is right."""
    with _clients_lock:
        if uri not in _clients:
            _clients[uri] = MongoClient(
                uri, tz_aware=True, event_listeners=[COMMANDS], **client_defaults(uri)
            )
        return _clients[uri]


def close_client(uri: str) -> None:
    """Close and forget the client of a URI the process no longer uses (its monitor threads
    would otherwise keep calling an address that is gone)."""
    with _clients_lock:
        client = _clients.pop(uri, None)
    if client is not None:
        client.close()


class MongoResource(ConfigurableResource):
    """The orders database (MONGODB_URI, MONGODB_DB)."""

    uri: str = Field(description="MONGODB_URI")
    database: str = Field(description="MONGODB_DB")

    def get_database(self) -> Database:
        return mongo_client(self.uri)[self.database]


#: Conditions already announced on Slack (`effects/alert_memory.py`), forgotten after 31 days.
ALERTED = "ordertrack_alerted"
#: What a run decided for the orders it wrote while fetching (`tracking/streaming.py`).
STREAMED = "ordertrack_streamed"
#: `$getField` (the History guard of the write path) needs MongoDB 5.0.
MINIMUM_SERVER_VERSION = (5, 0)


class OncePerDatabase:
    """The databases (client and name) this process has done one thing for, such as making
    sure of indexes: asking again would cost round trips at every run or step."""

    def __init__(self) -> None:
        self._done: set[tuple[int, str]] = set()

    def done(self, db: Database) -> bool:
        return (id(db.client), db.name) in self._done

    def mark(self, db: Database) -> None:
        self._done.add((id(db.client), db.name))


_prepared = OncePerDatabase()


class DatabaseNotReady(RuntimeError):
    """The database cannot give the guarantees the write path relies on: nothing is written."""


def server_version(db: Database) -> tuple[int, ...]:
    info = db.client.server_info()
    numbers = info.get("versionArray") or str(info.get("version", "0")).split(".")
    return tuple(int(part) for part in list(numbers)[:2])


def _index_identity(index: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two index descriptions the same index for the tracker: its keys and the
    options it relies on (a listing may give a direction as 1.0)."""
    keys = tuple(
        (name, int(way) if isinstance(way, int | float) else way)
        for name, way in index["key"].items()
    )
    return (
        keys,
        bool(index.get("unique")),
        bool(index.get("sparse")),
        index.get("expireAfterSeconds"),
    )


def ensure_indexes(collection: Collection, wanted: Sequence[IndexModel]) -> None:
    """Create the indexes of `wanted` the collection lacks, in one command.

    Creating an index that exists is a no-op for MongoDB, but still a round trip per index at
    every run; one listing per collection says which are missing. An index on the same keys
    with other options counts as missing, so MongoDB's own conflict error names it."""
    existing = {_index_identity(index) for index in collection.list_indexes()}
    missing = [index for index in wanted if _index_identity(index.document) not in existing]
    if missing:
        collection.create_indexes(missing)


def prepare_database(db: Database, *, again: bool = False) -> list[str]:
    """Check the server version and create the indexes the tracker relies on.

    Refuses (DatabaseNotReady) a server older than MongoDB 5.0, and a database where the
    unique `orderTracking.orderId` index cannot be built: without it two runs could each
    create an orderTracking for one order. The other indexes only speed queries up, so a
    failure there is a warning. Indexes that exist are not asked for again (`ensure_indexes`).
    Once per process and database, unless `again` (a database dropped and seeded anew).
    """
    if _prepared.done(db) and not again:
        return []
    version = server_version(db)
    if version < MINIMUM_SERVER_VERSION:
        raise DatabaseNotReady(
            f"MongoDB {'.'.join(map(str, version))} is too old: ordertrack needs MongoDB "
            f"{'.'.join(map(str, MINIMUM_SERVER_VERSION))} or newer ($getField); nothing written"
        )
    try:
        ensure_indexes(db["orderTracking"], [IndexModel([("orderId", ASCENDING)], unique=True)])
    except OperationFailure as error:
        raise DatabaseNotReady(
            "the unique index orderTracking.orderId cannot be built, so one orderTracking per "
            f"order cannot be guaranteed; nothing written. Remove the duplicates first: {error}"
        ) from None
    warnings: list[str] = []
    wanted = {
        "orders": [
            IndexModel([("order_status", ASCENDING), ("last_tracking_time", ASCENDING)]),
            # selection's sort (polling.SELECTION_SORT): earliest next poll first
            IndexModel(
                [
                    ("ordertrack_next_poll_at", ASCENDING),
                    ("ordertrack_asked_at", ASCENDING),
                    ("last_tracking_time", ASCENDING),
                ]
            ),
            IndexModel([("awb_number", ASCENDING)]),
            # orders looked up by LR number (a re-poll ops ask for by tracking key)
            IndexModel([("delhivery_lr_number", ASCENDING)], sparse=True),
            IndexModel([("ordertrack_outbox", ASCENDING)], sparse=True),
            IndexModel([("ordertrack_tracking_due", ASCENDING)], sparse=True),
        ],
        ALERTED: [
            IndexModel([("first_run", ASCENDING)]),
            IndexModel([("first_seen", ASCENDING)], expireAfterSeconds=31 * 86_400),
        ],
        STREAMED: [
            IndexModel([("run_id", ASCENDING)]),
            IndexModel([("created_at", ASCENDING)], expireAfterSeconds=86_400),
        ],
    }
    for collection, indexes in wanted.items():
        try:
            ensure_indexes(db[collection], indexes)
        except OperationFailure as error:
            keys = [dict(index.document["key"]) for index in indexes]
            warnings.append(f"indexes of {collection} ({keys}) not all created: {error}")
    _prepared.mark(db)
    return warnings


class WriteNotAcknowledged(RuntimeError):
    """MongoDB could not confirm a write with the required write concern: it may or may not
    stay applied, so it is never counted as done (the step fails and says so)."""


#: How many times an idempotent multi-document update is sent before it fails the step.
UPDATE_ATTEMPTS = 3


def _worth_resending(error: Exception) -> bool:
    """The update may not have been applied, or may not be confirmed, and saying so again
    is harmless: a lost answer or a step-down (NotWritablePrimary is an AutoReconnect), an
    unconfirmed write concern, or the server's own `RetryableWriteError` label."""
    if isinstance(error, AutoReconnect | WriteConcernError):
        return True
    return isinstance(error, OperationFailure) and error.has_error_label("RetryableWriteError")


def update_many_idempotent(
    collection: Collection,
    query: Mapping[str, Any],
    update: Mapping[str, Any],
    changed: Mapping[str, Any] | None = None,
) -> int:
    """`update_many` whose second sending changes nothing more (its `query` no longer
    matches an updated document, or it sets the same values again). MongoDB's retryable
    writes exclude multi-document updates, so a step-down or a lost answer would fail it,
    or leave it half done without a word: it is sent again up to `UPDATE_ATTEMPTS` times,
    then `WriteNotAcknowledged`.

    Returns the documents changed: the answer's count, or after a failed attempt the
    documents matching `changed` (the mark this call's update sets), so a document whose
    answer was lost is counted once and one never updated is not counted.
    """
    errors: list[str] = []
    for attempt in range(UPDATE_ATTEMPTS):
        try:
            result = collection.update_many(dict(query), dict(update))
        except (AutoReconnect, OperationFailure) as error:
            if not _worth_resending(error):
                raise
            errors.append(f"{type(error).__name__}: {error}")
            continue
        if attempt == 0 or changed is None:
            return result.modified_count
        return collection.count_documents(dict(changed))
    raise WriteNotAcknowledged(
        f"{collection.name}: an update of many documents was not confirmed after "
        f"{UPDATE_ATTEMPTS} attempts ({'; '.join(errors)}); it is safe to run again"
    )


@dataclass(frozen=True)
class Rejected:
    """One operation the server refused, named by the document it was for."""

    collection: str
    key: Any
    error: str
    code: int | None = None  # the server's error code: the same whenever the cause is

    def __str__(self) -> str:
        return f"{self.collection}: update {self.key}: {self.error}"


@dataclass
class BulkLog:
    """Round trips and the operations the server rejected, over a series of bulk writes."""

    bulk_calls: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def bulk_update(
    collection: Collection, ops: Sequence[UpdateOne], log: BulkLog, chunk: int = BULK_CHUNK
) -> tuple[int, int, int]:
    """Unordered bulk writes of at most `chunk` operations; (matched, modified, upserted)."""
    totals = (0, 0, 0)
    for start in range(0, len(ops), chunk):
        counts = _bulk_once(collection, list(ops[start : start + chunk]), log)
        totals = (totals[0] + counts[0], totals[1] + counts[1], totals[2] + counts[2])
    return totals


def _acknowledged(collection: Collection, details: dict[str, Any]) -> None:
    if details.get("writeConcernErrors"):
        errors = "; ".join(str(e.get("errmsg")) for e in details["writeConcernErrors"])
        raise WriteNotAcknowledged(
            f"{collection.name}: the write was not acknowledged by the required write concern "
            f"({errors}); it may or may not stay applied"
        )


def _bulk_once(
    collection: Collection, ops: list[UpdateOne], report: BulkLog
) -> tuple[int, int, int]:
    """One bulk write; if the server rejects it, retry operation by operation.

    MongoDB reports per-operation errors; some compatible servers fail the whole command
    instead. Either way the good operations land and the bad ones are named. A write-concern
    error is never taken for success: it raises `WriteNotAcknowledged`.
    """
    if not ops:
        return 0, 0, 0
    report.bulk_calls += 1
    try:
        result = collection.bulk_write(ops, ordered=False)
        return result.matched_count, result.modified_count, result.upserted_count
    except BulkWriteError as error:
        details = error.details
        _acknowledged(collection, details)
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
    except WriteConcernError as error:
        _acknowledged(collection, {"writeConcernErrors": [{"errmsg": str(error)}]})
        raise  # unreachable: _acknowledged raised
    except OperationFailure:
        return _one_by_one(collection, ops, report)


def _one_by_one(
    collection: Collection, ops: list[UpdateOne], report: BulkLog
) -> tuple[int, int, int]:
    matched = modified = upserted = 0
    for op in ops:
        report.bulk_calls += 1
        try:
            result = _write_one(collection, op)
        except (BulkWriteError, OperationFailure) as error:
            report.rejected.append(
                Rejected(collection.name, _key(op), str(error), _error_code(error))
            )
            continue
        matched += result.matched_count
        modified += result.modified_count
        upserted += result.upserted_count
    return matched, modified, upserted


def _write_one(collection: Collection, op: UpdateOne) -> Any:
    """One operation; a concurrent upsert that won the race (E11000) is retried as an update."""
    for attempt in range(2):
        try:
            return collection.bulk_write([op], ordered=True)
        except BulkWriteError as error:
            _acknowledged(collection, error.details)
            if attempt or "E11000" not in str(error.details):
                raise
        except WriteConcernError as error:
            _acknowledged(collection, {"writeConcernErrors": [{"errmsg": str(error)}]})
        except OperationFailure as error:
            if attempt or "E11000" not in str(error):
                raise
    raise AssertionError("unreachable")


def _error_code(error: OperationFailure) -> int | None:
    """The server's code for the one operation (a bulk error's own code is a generic 65)."""
    if isinstance(error, BulkWriteError):
        return (error.details.get("writeErrors") or [{}])[0].get("code")
    return error.code


def _key(op: UpdateOne) -> Any:
    return op._filter.get("_id") or op._filter.get("orderId")
