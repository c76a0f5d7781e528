"""`raw_courier_responses`' table built from the fetch records (pure: no server)."""

import json
from datetime import UTC, datetime

import pandas as pd

from ordertrack_dagster.records import FetchRecord, FetchState
from ordertrack_dagster.tracking.steps import TEXT_CHUNK, fetch_frame


def _answered(key: str) -> FetchRecord:
    raw = json.dumps(
        {"ShipmentData": [{"Shipment": {"AWB": key, "Status": {"Status": "Manifested"}}}]}
    )
    return FetchRecord(key, FetchState.ANSWERED, 0, 200, datetime.now(UTC), 12.5, 1, raw, None)


def _failed(key: str) -> FetchRecord:
    now = datetime.now(UTC)
    return FetchRecord(key, FetchState.FAILED, 1, 503, now, 40.0, 3, None, "503 from courier")


def test_every_record_is_a_row_in_order_with_its_answer_as_text_across_chunks():
    records = [_answered(f"AWB{i:05d}") for i in range(2 * TEXT_CHUNK + 7)]
    records[TEXT_CHUNK] = _failed("AWB-FAILED")
    frame = fetch_frame(records)
    assert list(frame.columns) == list(FetchRecord.__dataclass_fields__)
    assert frame["tracking_key"].tolist() == [record.tracking_key for record in records]
    assert pd.api.types.is_string_dtype(frame["raw"].dtype)
    assert frame["raw"].iloc[0] == records[0].raw
    assert frame["raw"].iloc[-1] == records[-1].raw
    failed = frame.iloc[TEXT_CHUNK]
    assert pd.isna(failed["raw"]) and failed["error"] == "503 from courier"
    assert failed["state"] == str(FetchState.FAILED)


def test_answers_and_errors_are_text_columns_even_when_every_cell_is_empty():
    """So every run's Parquet object has the same types and many runs read as one table."""
    failed = fetch_frame([_failed("AWB1"), _failed("AWB2")])
    assert pd.api.types.is_string_dtype(failed["raw"].dtype) and failed["raw"].isna().all()
    answered = fetch_frame([_answered("AWB3")])
    assert pd.api.types.is_string_dtype(answered["error"].dtype)
    assert answered["error"].isna().all()
    empty = fetch_frame([])
    assert empty.empty and list(empty.columns) == list(FetchRecord.__dataclass_fields__)
