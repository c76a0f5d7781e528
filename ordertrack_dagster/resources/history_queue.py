"""The tracking steps' outputs, kept in MongoDB first and copied to S3 when S3 answers.

The four tracking steps hand their DataFrames to each other through MongoDB (which the
status writes need anyway), never through S3: an S3 outage must not stop tracking (contract §7).
Each output is one Parquet object, stored as chunks below MongoDB's 16 MB document limit
under the id of the run that produced it, so a step reads its own run's output even while
another run of the flow writes. Publishing copies each object to its S3 history key (the
key analysts read, dated by when the run stored it) oldest first; an object stays queued,
durably, until S3 took it, and is removed a retention period after that. An object S3 keeps
refusing does not stay for ever: the history check (`orchestration/checks.py`) alerts when
one waits too long, and drops those older than the retention, naming them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson import Binary
from pymongo import ASCENDING, IndexModel
from pymongo.database import Database

from ordertrack_dagster.resources.mongo import (
    OncePerDatabase,
    ensure_indexes,
    update_many_idempotent,
)

OBJECTS = "ordertrack_history"
CHUNKS = "ordertrack_history_chunks"
CHUNK_BYTES = 8 * 1024 * 1024  # half of MongoDB's document limit
#: How long a published object stays in MongoDB, for re-executing a step of a recent run.
RETENTION = timedelta(days=7)
#: After a failed upload, this process leaves S3 alone for a while instead of paying the
#: failure again at every step.
BACKOFF_SECONDS = 300.0
PUBLISH_BATCH = 50
PUBLISH_WITHIN_SECONDS = 30.0

_s3_down_until = 0.0
_lock = threading.Lock()


class MissingOutput(LookupError):
    """A step's output is not (or no longer) kept: the run that made it is unknown or too old."""


@dataclass(frozen=True)
class Published:
    """What one publishing pass did."""

    published: int
    pending: int
    error: str | None = None


def object_id(asset: str, flow: str, run_id: str) -> str:
    return f"{asset}:{flow}:{run_id}"


def _chunk_ids(oid: str, chunks: int) -> list[str]:
    """The chunks' ids: reading and marking them by id uses the `_id` index (there is
    none on `object`), and ignores any chunk beyond the object's count."""
    return [f"{oid}:{n}" for n in range(chunks)]


#: The databases whose history indexes this process has made sure of.
_indexed = OncePerDatabase()


class HistoryQueue:
    """The `ordertrack_history` objects and their chunks in one database."""

    def __init__(self, db: Database) -> None:
        self.objects = db[OBJECTS]
        self.chunks = db[CHUNKS]

    def ensure_indexes(self) -> None:
        """Once per process and database, and only the missing ones (`ensure_indexes`): a
        run stores four outputs."""
        db = self.objects.database
        if _indexed.done(db):
            return
        expiry = IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0)
        ensure_indexes(
            self.objects, [IndexModel([("state", ASCENDING), ("created_at", ASCENDING)]), expiry]
        )
        ensure_indexes(self.chunks, [expiry])
        _indexed.mark(db)

    def store(
        self, asset: str, flow: str, run_id: str, key: str, body: bytes, rows: int, now: datetime
    ) -> str:
        """Keep one output; the chunks go first, so a listed object is always complete."""
        oid = object_id(asset, flow, run_id)
        parts = [body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)] or [b""]
        for n, (chunk_id, part) in enumerate(zip(_chunk_ids(oid, len(parts)), parts, strict=True)):
            self.chunks.replace_one(
                {"_id": chunk_id}, {"object": oid, "n": n, "data": Binary(part)}, upsert=True
            )
        header = {
            "asset": asset,
            "flow": flow,
            "run_id": run_id,
            "key": key,
            "rows": rows,
            "bytes": len(body),
            "chunks": len(parts),
            "state": "pending",
            "created_at": now,
        }
        replaced = self.objects.replace_one({"_id": oid}, header, upsert=True)
        if replaced.matched_count:  # stored again (a retried step): drop chunks left over
            self.chunks.delete_many({"object": oid, "n": {"$gte": len(parts)}})
        return oid

    def holds(self, asset: str, flow: str, run_id: str) -> bool:
        """Whether run `run_id`'s output is kept."""
        oid = object_id(asset, flow, run_id)
        return self.objects.find_one({"_id": oid}, {"_id": 1}) is not None

    def load(self, asset: str, flow: str, run_id: str | None) -> bytes:
        """The output of run `run_id`; without a run, the one stored last."""
        if run_id is None:
            latest = self.objects.find_one(
                {"asset": asset, "flow": flow}, {"run_id": 1}, sort=[("created_at", -1)]
            )
            run_id = latest["run_id"] if latest else "(none)"
        oid = object_id(asset, flow, run_id)
        header = self.objects.find_one({"_id": oid}, {"chunks": 1})
        if header is None:
            raise MissingOutput(
                f"no stored output of {asset} for flow {flow} and run {run_id} (older than "
                f"{RETENTION.days} days, or never written)"
            )
        return self._body(oid, int(header["chunks"]))

    def _body(self, oid: str, chunks: int) -> bytes:
        found = self.chunks.find({"_id": {"$in": _chunk_ids(oid, chunks)}})
        parts = {doc["n"]: bytes(doc["data"]) for doc in found}
        if len(parts) != chunks:
            raise MissingOutput(f"stored output {oid} is incomplete ({len(parts)}/{chunks})")
        return b"".join(parts[n] for n in range(chunks))

    def waiting_since(self, cutoff: datetime) -> list[dict[str, Any]]:
        """The objects of every asset and flow still queued that were stored before
        `cutoff`, oldest first (their headers, without the data)."""
        return list(
            self.objects.find(
                {"state": "pending", "created_at": {"$lt": cutoff}},
                {"asset": 1, "flow": 1, "run_id": 1, "created_at": 1, "chunks": 1, "rows": 1},
            ).sort([("created_at", ASCENDING), ("_id", ASCENDING)])
        )

    def drop(self, headers: list[dict[str, Any]]) -> None:
        """Remove queued objects and their chunks (chunks first: a listed object is whole)."""
        chunk_ids = [
            chunk
            for header in headers
            for chunk in _chunk_ids(header["_id"], int(header["chunks"]))
        ]
        self.chunks.delete_many({"_id": {"$in": chunk_ids}})
        self.objects.delete_many(
            {"_id": {"$in": [header["_id"] for header in headers]}, "state": "pending"}
        )

    def pending(self, asset: str, flow: str) -> int:
        return self.objects.count_documents({"asset": asset, "flow": flow, "state": "pending"})

    def publish(
        self,
        asset: str,
        flow: str,
        upload: Callable[[str, bytes, dict[str, Any]], None],
        now: datetime,
        in_hand: dict[str, bytes] | None = None,
    ) -> Published:
        """Upload this asset's and flow's queued objects to S3, oldest first, while S3 answers.

        `upload(key, body, header)` raises on failure; the object then stays queued and this
        process waits `BACKOFF_SECONDS` before trying S3 again. `in_hand` holds bodies the
        caller has just stored (by object id): those are not read back from their chunks.
        """
        global _s3_down_until
        if time.monotonic() < _s3_down_until:
            return Published(0, self.pending(asset, flow), "S3 failed recently; queued")
        started = time.monotonic()
        in_hand = in_hand or {}
        published = 0
        queued = list(
            self.objects.find({"asset": asset, "flow": flow, "state": "pending"})
            .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
            .limit(PUBLISH_BATCH)
        )
        for header in queued:
            if time.monotonic() - started > PUBLISH_WITHIN_SECONDS:
                break
            oid = header["_id"]
            try:
                body = in_hand[oid] if oid in in_hand else self._body(oid, int(header["chunks"]))
                upload(header["key"], body, header)
            except Exception as error:  # any S3 failure: keep it queued, durable
                with _lock:
                    _s3_down_until = time.monotonic() + BACKOFF_SECONDS
                return Published(published, self.pending(asset, flow), f"{error}")
            expire = now + RETENTION
            self.objects.update_one(
                {"_id": oid},
                {"$set": {"state": "published", "published_at": now, "expire_at": expire}},
            )
            update_many_idempotent(
                self.chunks,
                {"_id": {"$in": _chunk_ids(oid, int(header["chunks"]))}},
                {"$set": {"expire_at": expire}},
            )
            published += 1
        if len(queued) < PUBLISH_BATCH:  # all of the queue was seen: no need to count it
            return Published(published, len(queued) - published)
        return Published(published, self.pending(asset, flow))


def reset_backoff() -> None:
    """Forget a recent S3 failure (tests restart S3 within one process)."""
    global _s3_down_until
    _s3_down_until = 0.0
