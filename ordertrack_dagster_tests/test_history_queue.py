"""The history queue (step outputs kept in MongoDB on their way to S3), against the local
MongoDB: what it costs a run beyond storing and publishing."""

from ordertrack_dagster.resources.history_queue import CHUNKS, HistoryQueue
from ordertrack_dagster.resources.mongo import COMMANDS


def test_the_history_indexes_are_made_once_per_process_and_database(db):
    HistoryQueue(db).ensure_indexes()  # a run's first output
    assert "expire_at_1" in db[CHUNKS].index_information()
    before = COMMANDS.snapshot()
    HistoryQueue(db).ensure_indexes()  # its later outputs
    assert COMMANDS.snapshot().since(before).commands == 0
