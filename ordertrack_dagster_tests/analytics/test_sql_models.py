"""The `sql/` models: discovery, and each model's exact result over the scenario history."""

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, materialize

from ordertrack_dagster.analytics.assets import GROUP, sql_model_assets
from ordertrack_dagster.analytics.models import discover_models, parse_model, run_model
from ordertrack_dagster_tests.analytics import scenario
from ordertrack_dagster_tests.helpers import load_definitions

AS_OF = datetime(2024, 9, 22, 12, 0, tzinfo=UTC)
MODELS = {model.name: model for model in discover_models()}


def day(text: str) -> date:
    return date.fromisoformat(text)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def plain(value: object) -> object:
    """A cell as a plain Python value: missing -> None, a DATE column's midnight -> date."""
    if not isinstance(value, list | tuple) and pd.isna(value):
        return None
    if isinstance(value, pd.Timestamp):
        if value.tzinfo is None and value == value.normalize():
            return value.date()
        return value.to_pydatetime()
    return value


def rows(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(plain(v) for v in row) for row in frame.astype(object).itertuples(index=False)]


def run(name, store, filesystem, lookback_days=3, **kwargs):
    return run_model(
        MODELS[name], store, filesystem, as_of=AS_OF, lookback_days=lookback_days, **kwargs
    )


def test_courier_runs(history, store, filesystem):
    frame = run("courier_runs", store, filesystem)
    assert list(frame.columns) == [
        "flow", "run_id", "run_date", "started_at", "keys", "answered", "not_answered",
        "failed", "deferred", "most_common_error", "requests", "retries",
        "latency_ms_p50", "latency_ms_p99", "latency_ms_max",
    ]  # fmt: skip
    not_answered = scenario.NOT_ANSWERED
    assert rows(frame) == [
        ("delhivery_b2c", "b2c-1", day("2024-09-20"), utc("2024-09-20 06:00"),
         5, 4, 1, 0, 0, not_answered, 1, 0, 120.0, 120.0, 120.0),
        ("shiprocket", "sr-1", day("2024-09-21"), utc("2024-09-21 06:00"),
         3, 3, 0, 0, 0, None, 1, 0, 200.0, 200.0, 200.0),
        ("shiprocket", "sr-2", day("2024-09-21"), utc("2024-09-21 06:08"),
         3, 0, 0, 2, 1, "HTTP 502", 1, 2, 50.0, 50.0, 50.0),
        # two requests (100 ms, 300 ms after one retry); the odd key was never sent
        ("delhivery_b2c", "b2c-2", day("2024-09-22"), utc("2024-09-22 06:00"),
         5, 3, 1, 1, 0, not_answered, 2, 1, 200.0, 298.0, 300.0),
    ]  # fmt: skip


def test_status_distribution(history, store, filesystem):
    frame = run("status_distribution", store, filesystem)
    # AWB1 counts once, at its newest status; unmapped and unanswered keys are left out
    assert rows(frame) == [
        ("delhivery_b2c", "delivered", 1, 33.3),
        ("delhivery_b2c", "in transit", 1, 33.3),
        ("delhivery_b2c", "out_for_delivery", 1, 33.3),
        ("shiprocket", "delivered", 1, 50.0),
        ("shiprocket", "rto in transit", 1, 50.0),
    ]


def test_transitions_per_day(history, store, filesystem):
    frame = run("transitions_per_day", store, filesystem)
    assert list(frame.columns) == ["run_date", "flow", "from_status", "to_status", "orders"]
    assert rows(frame) == [
        (day("2024-09-20"), "delhivery_b2c", "4", "in transit", 1),
        (day("2024-09-20"), "delhivery_b2c", "pending", "in transit", 1),
        (day("2024-09-21"), "shiprocket", "in transit", "rto in transit", 1),
        (day("2024-09-21"), "shiprocket", "out_for_delivery", "delivered", 1),
        (day("2024-09-22"), "delhivery_b2c", "in transit", "out_for_delivery", 1),
    ]


def test_unmapped_statuses(history, store, filesystem):
    frame = run("unmapped_statuses", store, filesystem)
    assert list(frame.columns) == [
        "flow", "courier_status", "answers", "shipments", "first_seen", "last_seen",
        "example_orders",
    ]  # fmt: skip
    assert rows(frame) == [
        ("delhivery_b2c", "ud-held_at_hub", 3, 2, day("2024-09-20"), day("2024-09-22"),
         "1002, 1006"),
        ("shiprocket", "REACHED_WAREHOUSE", 2, 1, day("2024-09-21"), day("2024-09-21"), "2002"),
    ]  # fmt: skip


def test_stuck_shipments_default_and_overridden_days(history, store, filesystem):
    assert MODELS["stuck_shipments"].params == {"stuck_days": 3}
    frame = run("stuck_shipments", store, filesystem)
    assert list(frame.columns) == [
        "flow", "tracking_key", "order_id", "last_status", "last_courier_status",
        "last_scan_at", "days_without_scan",
    ]  # fmt: skip
    # AWB4 is old but delivered (final); AWB5 is old but no longer selected
    assert rows(frame) == [
        ("delhivery_b2c", "AWB3", "1003", None, None, utc("2024-09-14 00:00"), 8.5),
        ("delhivery_b2c", "AWB2", "1002", None, "ud-held_at_hub", utc("2024-09-18 08:00"), 4.2),
        ("delhivery_b2c", scenario.ODD_KEY, "1007", None, None, utc("2024-09-19 10:00"), 3.1),
        ("shiprocket", "SR2", "2002", None, "REACHED_WAREHOUSE", utc("2024-09-17 06:00"), 5.3),
    ]
    five = run("stuck_shipments", store, filesystem, params={"stuck_days": "5"})
    assert list(five["tracking_key"]) == ["AWB3", "SR2"]
    with pytest.raises(ValueError, match="no parameter stuck_hours"):
        run("stuck_shipments", store, filesystem, params={"stuck_hours": "5"})


def test_lookback_limits_the_run_days_read(history, store, filesystem):
    frame = run("courier_runs", store, filesystem, lookback_days=2)
    assert list(frame["run_id"]) == ["sr-1", "sr-2", "b2c-2"]


def test_models_on_an_empty_history(store, filesystem):
    for name in MODELS:
        frame = run(name, store, filesystem)
        assert frame.empty, name
        assert len(frame.columns) >= 4, name


def test_a_new_sql_file_becomes_an_asset(tmp_path: Path):
    (tmp_path / "late_deliveries.sql").write_text(
        "-- Deliveries per flow.\n"
        "-- Counts what the couriers said.\n"
        "-- $min_orders = 2  smallest count shown\n"
        "SELECT flow, count(*) AS orders FROM order_status_writes -- status_updates, not read\n"
        "WHERE to_status = 'delivered' GROUP BY flow HAVING count(*) >= $min_orders\n"
    )
    (tmp_path / "notes.txt").write_text("not a model")
    (asset_def,) = sql_model_assets(tmp_path)
    key = AssetKey([GROUP, "late_deliveries"])
    assert asset_def.key == key
    assert asset_def.group_names_by_key[key] == GROUP
    assert asset_def.descriptions_by_key[key] == (
        "Deliveries per flow.\nCounts what the couriers said.\n"
        "$min_orders = 2  smallest count shown"
    )
    assert {dep.asset_key for dep in asset_def.specs_by_key[key].deps} == {
        AssetKey("order_status_writes")
    }
    assert asset_def.partitions_def is None
    model = parse_model(tmp_path / "late_deliveries.sql")
    assert model.params == {"min_orders": 2}
    assert model.bind(AS_OF) == {"min_orders": 2}


@pytest.mark.parametrize(
    ("file_name", "text", "error"),
    [
        ("late-deliveries.sql", "-- x\nSELECT 1", "letters, digits and underscores"),
        ("bare.sql", "SELECT 1", "start the file with `--` lines"),
        ("typo.sql", "-- $days = 3  x\nSELECT $dayz", "declare dayz in the header"),
    ],
)
def test_a_bad_sql_file_fails_at_load(tmp_path: Path, file_name, text, error):
    (tmp_path / file_name).write_text(text)
    with pytest.raises(ValueError, match=error):
        sql_model_assets(tmp_path)


def test_each_model_lists_its_columns_before_it_is_materialized():
    """`dagster/column_schema` comes from the query itself, over empty views: the page shows
    the columns and their types before any run."""
    for asset_def in sql_model_assets():
        (spec,) = asset_def.specs
        columns = {c.name: c.type for c in spec.metadata["dagster/column_schema"].columns}
        assert len(columns) >= 4, spec.key
        if spec.key.path[-1] == "courier_runs":
            assert columns["run_date"] == "date32[day]" and columns["keys"] == "int64"
            assert columns["started_at"] == "timestamp[us, tz=UTC]"


def test_models_refresh_after_writes_or_on_their_cron(tmp_path: Path):
    """Light models are stale after a tracking write (throttled); `-- @cron` ones on the cron,
    and the line stays out of the description."""
    (tmp_path / "daily.sql").write_text(
        "-- Heavy.\n-- @cron 0 3 * * *\nSELECT flow FROM status_updates\n"
    )
    (tmp_path / "light.sql").write_text("-- Light.\nSELECT flow FROM status_updates\n")
    daily, light = (spec for a in sql_model_assets(tmp_path) for spec in a.specs)
    assert daily.description == "Heavy."
    assert parse_model(tmp_path / "daily.sql").cron == "0 3 * * *"
    assert "0 3 * * *" in daily.automation_condition.get_label()
    assert "after tracking writes" in light.automation_condition.get_label()
    assert MODELS["stuck_shipments"].cron == "0 3 * * *"


def test_models_are_wired_into_the_code_location(stack_env):
    defs = load_definitions()
    for name, model in MODELS.items():
        asset_def = defs.resolve_assets_def(AssetKey([GROUP, name]))
        spec = asset_def.specs_by_key[AssetKey([GROUP, name])]
        assert spec.group_name == GROUP
        assert spec.description == model.description
        assert {dep.asset_key for dep in spec.deps} == {AssetKey(view) for view in model.views}
    assert MODELS["courier_runs"].views == ("raw_courier_responses",)


def test_materializing_a_model_stores_and_previews_it(stack, store, bucket):
    today = datetime.now(UTC).date()
    scenario.write(store, scenario.build(today))
    defs = load_definitions()
    key = AssetKey([GROUP, "unmapped_statuses"])
    result = materialize(list(defs.assets or []), resources=defs.resources, selection=[key])
    assert result.success
    (materialization,) = result.asset_materializations_for_node("analytics__unmapped_statuses")
    metadata = materialization.metadata
    assert metadata["dagster/row_count"].value == 2
    preview = metadata["preview"].value
    assert "| flow" in preview and "ud-held_at_hub" in preview and "REACHED_WAREHOUSE" in preview
    assert metadata["uri"].value == f"s3://{bucket}/ordertrack/analytics/unmapped_statuses.parquet"
    assert metadata["history_window"].value == (
        f"{today - timedelta(days=6)} to {today} (UTC run days)"
    )
    columns = metadata["dagster/column_schema"].value.columns
    assert [column.name for column in columns] == list(
        defs.load_asset_value(key).columns
    )  # the columns the page lists are the table's

    stored = defs.load_asset_value(key)
    assert list(stored["courier_status"]) == ["ud-held_at_hub", "REACHED_WAREHOUSE"]
    assert list(stored["first_seen"].dt.date) == [today - timedelta(days=2), today - timedelta(1)]
