"""The history queue (step outputs kept in MongoDB on their way to S3), against the local
MongoDB: what it costs a run beyond storing and publishing."""

from datetime import UTC, datetime, timedelta

import pytest

from ordertrack_dagster.resources import history_queue
from ordertrack_dagster.resources.history_queue import (
    CHUNKS,
    PUBLISH_BATCH,
    HistoryQueue,
    Published,
    reset_backoff,
)
from ordertrack_dagster.resources.mongo import COMMANDS


def test_the_history_indexes_are_made_once_per_process_and_database(db):
    HistoryQueue(db).ensure_indexes()  # a run's first output
    assert "expire_at_1" in db[CHUNKS].index_information()
    before = COMMANDS.snapshot()
    HistoryQueue(db).ensure_indexes()  # its later outputs
    assert COMMANDS.snapshot().since(before).commands == 0


NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_backoff():
    """No S3 failure remembered from an earlier test of this process, nor left to a later one."""
    reset_backoff()
    yield
    reset_backoff()


def _store(queue: HistoryQueue, run_id: str, body: bytes, minutes: int) -> str:
    at = NOW + timedelta(minutes=minutes)
    return queue.store("raw", "velocity", run_id, f"key/{run_id}", body, 1, at)


def test_a_body_just_stored_is_published_without_reading_it_back(db):
    queue = HistoryQueue(db)
    queue.ensure_indexes()
    older = _store(queue, "run-1", b"older", 0)  # left queued by an S3 outage
    fresh = _store(queue, "run-2", b"fresh", 1)
    uploaded: list[tuple[str, bytes]] = []
    before = COMMANDS.snapshot()
    published = queue.publish(
        "raw",
        "velocity",
        lambda key, body, header: uploaded.append((key, body)),
        NOW,
        in_hand={fresh: b"fresh"},
    )
    # one listing, the older object's chunks, then two marks per object; no count after it
    assert COMMANDS.snapshot().since(before).commands == 6
    assert uploaded == [("key/run-1", b"older"), ("key/run-2", b"fresh")]
    assert published == Published(2, 0)
    assert (
        queue.objects.count_documents({"_id": {"$in": [older, fresh]}, "state": "published"}) == 2
    )


def test_a_full_publishing_batch_counts_what_is_left(db):
    queue = HistoryQueue(db)
    for n in range(PUBLISH_BATCH + 2):
        _store(queue, f"run-{n}", b"x", n)
    published = queue.publish("raw", "velocity", lambda key, body, header: None, NOW)
    assert published == Published(PUBLISH_BATCH, 2)


def test_what_s3_refused_stays_queued_and_is_counted(db):
    queue = HistoryQueue(db)
    oid = _store(queue, "run-1", b"x", 0)

    def refuse(key: str, body: bytes, header: dict) -> None:
        raise ConnectionError("S3 is down")

    published = queue.publish("raw", "velocity", refuse, NOW, in_hand={oid: b"x"})
    assert published == Published(0, 1, "S3 is down")
    assert queue.objects.find_one({"_id": oid})["state"] == "pending"


def test_an_output_stored_again_with_fewer_chunks_reads_and_publishes_whole(db, monkeypatch):
    """A step retried in its run stores its output again: chunks of the first attempt
    beyond the new count are dropped, and never read as part of it."""
    monkeypatch.setattr(history_queue, "CHUNK_BYTES", 4)
    queue = HistoryQueue(db)
    oid = _store(queue, "run-1", b"first attempt", 0)  # 4 chunks
    _store(queue, "run-1", b"second", 0)  # 2 chunks
    assert queue.load("raw", "velocity", "run-1") == b"second"
    assert queue.chunks.count_documents({"object": oid}) == 2
    uploaded: list[bytes] = []
    queue.publish("raw", "velocity", lambda key, body, header: uploaded.append(body), NOW)
    assert uploaded == [b"second"]
    assert queue.chunks.count_documents({"object": oid, "expire_at": {"$exists": True}}) == 2
