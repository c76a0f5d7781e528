"""The history on S3: every run kept, read back exactly, by run day, and through Dagster."""

import io
import json
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
from dagster import AssetExecutionContext, AssetKey, asset, materialize

from ordertrack_dagster.analytics import (
    read_history,
    read_raw_responses,
    read_status_updates,
    unmapped_statuses,
)
from ordertrack_dagster.analytics.history import HISTORY_COLUMNS
from ordertrack_dagster.analytics.models import discover_models, run_model
from ordertrack_dagster.devstack.seed import seed_reference_data
from ordertrack_dagster.resources.s3 import dataframe_to_parquet, history_key
from ordertrack_dagster.tables import flow_partitions
from ordertrack_dagster_tests.analytics import scenario
from ordertrack_dagster_tests.helpers import load_definitions, run_tracking_assets, seed_orders

RUN_COLUMNS = ["flow", "run_date", "run_id"]
STORE_COLUMNS = ["stored_at", "s3_key"]


def as_stored(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as a Parquet round trip returns it (what any reader gets back)."""
    return pd.read_parquet(io.BytesIO(dataframe_to_parquet(frame)))


def expected_rows(history: scenario.Scenario, asset: str, *runs: str) -> pd.DataFrame:
    frames = [as_stored(history.frames[(asset, run)]) for run in runs]
    return pd.concat(frames, ignore_index=True)


def test_status_updates_are_read_back_exactly_by_run_day(history, store):
    frame = read_status_updates(
        "delhivery_b2c", "2024-09-20", "2024-09-21", s3_client=store.client, bucket=store.bucket
    )
    columns = HISTORY_COLUMNS["status_updates"]
    assert list(frame.columns) == [*RUN_COLUMNS, *columns, *STORE_COLUMNS]
    pd.testing.assert_frame_equal(frame[columns], expected_rows(history, "status_updates", "b2c-1"))
    assert set(frame["run_date"]) == {date(2024, 9, 20)}
    assert set(frame["run_id"]) == {"b2c-1"}
    assert set(frame["flow"]) == {"delhivery_b2c"}
    assert set(frame["s3_key"]) == {
        history_key("ordertrack", "status_updates", "delhivery_b2c", "b2c-1", datetime(2024, 9, 20))
    }

    both = read_status_updates(
        "delhivery_b2c",
        date(2024, 9, 19),
        datetime(2024, 9, 22, 23, 0, tzinfo=UTC),
        s3_client=store.client,
        bucket=store.bucket,
    )
    pd.testing.assert_frame_equal(
        both[columns], expected_rows(history, "status_updates", "b2c-1", "b2c-2")
    )
    assert list(both.drop_duplicates("run_id")["run_date"]) == [
        date(2024, 9, 20),
        date(2024, 9, 22),
    ]

    nothing = read_status_updates(
        "delhivery_b2c", "2024-09-21", "2024-09-21", s3_client=store.client, bucket=store.bucket
    )
    assert nothing.empty
    assert list(nothing.columns) == list(frame.columns)


def test_raw_responses_with_parsed_answers(history, store):
    frame = read_raw_responses(
        "shiprocket",
        "2024-09-21",
        "2024-09-21",
        parse_json=True,
        s3_client=store.client,
        bucket=store.bucket,
    )
    columns = HISTORY_COLUMNS["raw_courier_responses"]
    assert list(frame.columns) == [*RUN_COLUMNS, *columns[2:], *STORE_COLUMNS, "answer"]
    expected = expected_rows(history, "raw_courier_responses", "sr-1", "sr-2")
    pd.testing.assert_frame_equal(frame[columns], expected[columns])
    answered = frame["state"] == "answered"
    assert list(frame.loc[answered, "answer"]) == [json.loads(t) for t in expected["raw"][:3]]
    assert frame.loc[answered, "answer"].iloc[1] == {
        "AWB": "SR2",
        "ReferenceNo": "2002",
        "Status": "REACHED_WAREHOUSE",
    }
    assert frame.loc[~answered, "answer"].isna().all()


def test_unmapped_shiprocket_statuses_of_last_week_from_the_environment(history, store):
    written_by = datetime.now(UTC)  # the fixture stored the history moments ago
    last_week = (date(2024, 9, 16), date(2024, 9, 22))
    frame = unmapped_statuses("shiprocket", *last_week)  # AWS_* from the environment
    assert list(frame.columns) == [
        "courier_status",
        "order_id",
        "tracking_key",
        "run_id",
        "seen_at",
    ]
    assert [tuple(row) for row in frame.drop(columns="seen_at").itertuples(index=False)] == [
        ("REACHED_WAREHOUSE", "2002", "SR2", "sr-1"),
        ("REACHED_WAREHOUSE", "2002", "SR2", "sr-2"),
    ]
    for seen_at in frame["seen_at"]:  # when the run stored it (S3 keeps whole seconds)
        assert written_by - timedelta(minutes=1) < seen_at <= written_by
    b2c = unmapped_statuses("delhivery_b2c", *last_week)
    assert sorted(zip(b2c["order_id"], b2c["run_id"], strict=True)) == [
        ("1002", "b2c-1"),
        ("1002", "b2c-2"),
        ("1006", "b2c-1"),
    ]


def test_mistakes_are_named(store):
    with pytest.raises(ValueError, match="has no history"):
        read_history("order_status", "shiprocket", "2024-09-01", "2024-09-02", bucket=store.bucket)
    with pytest.raises(ValueError, match="before start"):
        read_status_updates("shiprocket", "2024-09-02", "2024-09-01", bucket=store.bucket)


def test_every_run_is_kept_and_dagster_loads_the_latest(stack_env, store):
    flow = "delhivery_b2c"
    assert flow in flow_partitions.get_partition_keys()
    runs = ["b2c-1", "b2c-2", "b2c-1"]
    frames = [
        scenario.build(datetime.now(UTC).date()).frames[("raw_courier_responses", r)] for r in runs
    ]
    stored: dict[str, pd.DataFrame] = {}

    @asset(
        name="raw_courier_responses",
        partitions_def=flow_partitions,
        io_manager_key="parquet_io_manager",
    )
    def stand_in(context: AssetExecutionContext) -> pd.DataFrame:
        frame = frames[len(stored)].assign(run_id=context.run_id)
        stored[context.run_id] = frame
        return frame

    defs = load_definitions()
    io_manager = {"parquet_io_manager": defs.resources["parquet_io_manager"]}
    for _ in runs:
        assert materialize([stand_in], partition_key=flow, resources=io_manager).success

    today = datetime.now(UTC).date()
    history = read_raw_responses(flow, today - timedelta(days=1), today + timedelta(days=1))
    assert sorted(history["run_id"].unique()) == sorted(stored)
    for run_id, frame in stored.items():
        mine = history[history["run_id"] == run_id].reset_index(drop=True)
        # the same values; a column may widen when runs are stacked (int with null -> float)
        pd.testing.assert_frame_equal(mine[frame.columns], as_stored(frame), check_dtype=False)
        assert set(mine["s3_key"]) == {
            history_key("ordertrack", "raw_courier_responses", flow, run_id, today)
        }

    latest = defs.load_asset_value(AssetKey("raw_courier_responses"), partition_key=flow)
    pd.testing.assert_frame_equal(latest, as_stored(list(stored.values())[-1]))


@pytest.mark.slow
def test_a_real_tracking_run_is_read_back_and_modelled(stack, stack_env, db, store, filesystem):
    """The tracking assets' own output (not a fixture) fits the readers and the SQL views."""
    flow = "delhivery_b2c"
    seeded = seed_orders(db, stack.simulator, flow, ["in_transit", "delivered", "manifested", None])
    defs = load_definitions()
    result = run_tracking_assets(defs, flow)  # no side effects
    assert result.success

    today = datetime.now(UTC).date()
    raw = read_raw_responses(flow, today - timedelta(days=1), today, parse_json=True)
    assert set(raw["run_id"]) == {result.run_id}
    assert set(raw["tracking_key"]) == {order.tracking_key for order in seeded}
    answered = raw[raw["state"] == "answered"]
    assert len(answered) == 3
    assert all(
        answer["AWB"] == key
        for key, answer in zip(answered["tracking_key"], answered["answer"], strict=True)
    )

    latest = defs.load_asset_value(AssetKey("status_updates"), partition_key=flow)
    updates = read_status_updates(flow, today - timedelta(days=1), today)
    pd.testing.assert_frame_equal(updates[list(latest.columns)], latest)

    models = {model.name: model for model in discover_models()}

    def run(name: str) -> pd.DataFrame:
        return run_model(models[name], store, filesystem, as_of=datetime.now(UTC), lookback_days=2)

    (courier_run,) = run("courier_runs").itertuples(index=False)
    assert (courier_run.run_id, courier_run.keys, courier_run.answered) == (result.run_id, 4, 3)
    assert courier_run.not_answered == 1 and courier_run.requests == 1
    distribution = run("status_distribution")
    assert set(zip(distribution["status"], distribution["shipments"], strict=True)) == {
        ("in transit", 1),
        ("delivered", 1),
    }
    booked = str(seed_reference_data(db).statuses["booked"]["status_id"])  # not canonical
    transitions = run("transitions_per_day")
    assert set(zip(transitions["from_status"], transitions["to_status"], strict=True)) == {
        (booked, "in transit"),
        (booked, "delivered"),
    }
    assert run("unmapped_statuses").empty
