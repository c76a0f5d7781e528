"""Detection delay in production, from a real tracking run's own tables: the write's check
and metadata (what ops plot in the UI) and the `detection_delay` SQL model (what analysts
query) agree with each other and with the courier's scan times in the raw answers."""

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from ordertrack_dagster.analytics import read_history, read_raw_responses
from ordertrack_dagster.analytics.models import discover_models, run_model
from ordertrack_dagster.records import INDIA
from ordertrack_dagster.tracking.assets import DETECTION_DELAY
from ordertrack_dagster_tests.helpers import load_definitions, run_tracking_assets, seed_orders

FLOW = "delhivery_b2c"


@pytest.mark.slow
def test_detection_delay_of_a_real_run(stack, stack_env, db, store, filesystem):
    steps = ["out_for_delivery", "delivered", "in_transit", "failed_attempt", "manifested", None]
    seeded = seed_orders(db, stack.simulator, FLOW, steps)
    defs = load_definitions()
    result = run_tracking_assets(defs, FLOW)  # no side effects
    assert result.success

    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == DETECTION_DELAY]
    figures = {name: entry.value for name, entry in check.metadata.items()}
    assert check.passed
    today = datetime.now(UTC).date()
    writes = read_history("order_status_writes", FLOW, today - timedelta(days=1), today)
    changed = writes[writes["action"] == "status_changed"]
    assert figures["detected_changes"] == len(changed) == 4  # manifested: no change; None: unknown
    # the scans' own times, read from the raw answers, against when we wrote
    raw = read_raw_responses(FLOW, today - timedelta(days=1), today, parse_json=True)
    scanned = {
        key: datetime.fromisoformat(answer["Status"]["StatusDateTime"]).replace(tzinfo=INDIA)
        for key, answer in zip(raw["tracking_key"], raw["answer"], strict=True)
        if isinstance(answer, dict)
    }
    expected = sorted(
        (row.written_at.to_pydatetime() - scanned[row.tracking_key]).total_seconds()
        for row in changed.itertuples()
    )
    assert all(seconds > 0 for seconds in expected)
    assert figures["detection_delay_max_seconds"] == pytest.approx(expected[-1], abs=0.1)
    assert figures["detection_delay_p50_seconds"] == pytest.approx(
        float(pd.Series(expected).quantile(0.5)), abs=0.1
    )
    assert set(figures["detection_delay_by_status"]) == {
        "out_for_delivery",
        "delivered",
        "in transit",
        "ndr",
    }
    # the materialization carries the same numbers, so the asset's plots show them too
    [materialization] = [
        m.materialization
        for m in result.get_asset_materialization_events()
        if m.asset_key.to_user_string() == "order_status_writes"
    ]
    assert (
        materialization.metadata["detection_delay_p95_seconds"].value
        == (figures["detection_delay_p95_seconds"])
    )

    model = {m.name: m for m in discover_models()}[DETECTION_DELAY]
    rows = run_model(model, store, filesystem, as_of=datetime.now(UTC), lookback_days=2)
    overall = rows[rows["status"] == "(all)"]
    assert overall["changes"].sum() == len(changed)
    if len(overall) == 1:  # the run's writes fell within one hour
        [row] = overall.itertuples()
        assert (row.flow, row.p50_seconds, row.max_seconds) == (
            FLOW,
            figures["detection_delay_p50_seconds"],
            figures["detection_delay_max_seconds"],
        )
    assert len(seeded) == len(writes)
