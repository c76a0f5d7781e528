"""Answers kept against a crash (tracking/checkpoint.py), in a real database: which kept
answers a later run may take instead of asking, and that a written run lets its own go."""

import logging
from datetime import UTC, datetime, timedelta

import pandas as pd

from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.records import KEPT_ANSWER_BATCH, FetchRecord, FetchState
from ordertrack_dagster.resources.mongo import FETCHED
from ordertrack_dagster.tracking import checkpoint

FLOW = get_flow("delhivery_b2c")
LOG = logging.getLogger(__name__)
NOW = datetime.now(UTC)


def _record(
    key: str, state: FetchState = FetchState.ANSWERED, minutes_ago: float = 1
) -> FetchRecord:
    at = NOW - timedelta(minutes=minutes_ago)
    return FetchRecord(key, state, 3, 200, at, 120.0, 1, '{"Status": "x"}', None)


def _pending(polled: dict[str, datetime | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tracking_key": list(polled),
            "last_tracking_time": pd.to_datetime(list(polled.values()), utc=True),
        }
    )


def test_a_kept_answer_stands_for_asking_only_when_newer_than_the_last_poll(db):
    keeper = checkpoint.Keeper(db, FLOW, "dead-run", LOG)
    keeper([_record("A"), _record("B"), _record("C", FetchState.NOT_ANSWERED), _record("D")])
    keeper([_record("E", minutes_ago=24 * 60)])  # older than any run can hold the flow
    other_flow = checkpoint.Keeper(db, get_flow("shiprocket"), "other", LOG)
    other_flow([_record("F")])
    pending = _pending(
        {
            "A": None,  # never polled: the kept answer stands
            "B": NOW - timedelta(seconds=10),  # written after the answer came: ask again
            "C": None,  # not answered: not kept, asked again
            "D": NOW - timedelta(hours=1),
            "E": None,
            "F": None,  # kept by another flow
        }
    )
    kept = checkpoint.kept_answers(db, FLOW, pending, NOW)
    assert set(kept) == {"A", "D"}
    assert kept["A"].state is FetchState.ANSWERED and kept["A"].raw == '{"Status": "x"}'
    assert abs(kept["A"].fetched_at - _record("A").fetched_at) < timedelta(milliseconds=1)
    # not sent by the run that takes it: no batch of its own, no latency, no attempt
    assert (kept["A"].batch, kept["A"].latency_ms, kept["A"].attempts) == (
        KEPT_ANSWER_BATCH,
        None,
        0,
    )


def test_a_written_run_lets_its_kept_answers_go(db):
    checkpoint.Keeper(db, FLOW, "written", LOG)([_record("A")])
    checkpoint.Keeper(db, FLOW, "dead", LOG)([_record("B")])
    checkpoint.discard(db, ["written"])
    assert [doc["run_id"] for doc in db[FETCHED].find()] == ["dead"]
