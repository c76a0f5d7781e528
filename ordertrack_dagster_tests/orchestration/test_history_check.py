"""The history check: S3 refusing the tracking history (a wrong bucket, on moto) leaves it
queued in MongoDB; the check alerts once when an object waits too long, and drops those
past the retention with an alert naming each (asset, flow, run id)."""

from datetime import UTC, datetime, timedelta

import pytest

from ordertrack_dagster.effects.delivery import DeliveryError
from ordertrack_dagster.orchestration.checks import HISTORY_CHECK, tend_history
from ordertrack_dagster.resources.history_queue import (
    CHUNKS,
    OBJECTS,
    HistoryQueue,
    reset_backoff,
)
from ordertrack_dagster_tests.helpers import load_definitions, materialize_flow, seed_orders

FLOW = "velocity"
TABLES = {"pending_orders", "raw_courier_responses", "status_updates", "order_status_writes"}


@pytest.fixture
def s3_refusing(stack_env, monkeypatch):
    """The history bucket does not exist: every upload is refused (as after a rotated key)."""
    monkeypatch.setenv("AWS_S3_BUCKET", "ordertrack-no-such-bucket")
    reset_backoff()
    yield
    reset_backoff()


def _check_op(job) -> str:
    [name] = [node.name for node in job.graph.node_defs if HISTORY_CHECK in node.name]
    return name


def _evaluate(job, instance, **config):
    result = job.execute_in_process(
        instance=instance, run_config={"ops": {_check_op(job): {"config": config}}}
    )
    [evaluation] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == HISTORY_CHECK
    ]
    return evaluation


@pytest.mark.usefixtures("s3_refusing")
def test_history_s3_refuses_is_alerted_once_then_dropped_naming_what_was_lost(
    stack, stack_env, db, instance
):
    seed_orders(db, stack.simulator, FLOW, ["in_transit"])
    tracked = materialize_flow(FLOW)
    assert tracked.success  # S3 refusing never stops tracking
    queued = list(db[OBJECTS].find({"run_id": tracked.run_id, "state": "pending"}))
    assert {header["asset"] for header in queued} == TABLES
    job = load_definitions().resolve_job_def("tracking_freshness_job")
    channel = stack_env["TRACKING_ALERTS_SLACK_CHANNEL"]

    def posted(mark: str) -> list[str]:
        texts = [m["text"] for m in stack.slack_messages(channel)]
        return [text for text in texts if text.startswith(mark) and tracked.run_id in text]

    assert _evaluate(job, instance).passed  # just stored: not yet waiting too long
    for _ in range(2):  # waiting over the threshold: failing, posted once
        waiting = _evaluate(job, instance, alert_after_hours=0)
        assert not waiting.passed and waiting.metadata["waiting_too_long"].value == len(TABLES)
    [alert] = posted(":inbox_tray:")
    assert f"flow {FLOW}, run {tracked.run_id}" in alert
    assert db[OBJECTS].count_documents({"run_id": tracked.run_id}) == len(TABLES)

    dropped = _evaluate(job, instance, alert_after_hours=0, drop_after_days=0)
    assert not dropped.passed and dropped.metadata["dropped"].value == len(TABLES)
    [lost] = posted(":wastebasket:")
    for table in TABLES:  # each object named: asset, flow, run id
        assert f"{table} of flow {FLOW}, run {tracked.run_id}" in lost
    assert db[OBJECTS].count_documents({"run_id": tracked.run_id}) == 0
    assert db[CHUNKS].count_documents({"_id": {"$regex": tracked.run_id}}) == 0
    assert _evaluate(job, instance, alert_after_hours=0).passed  # nothing left waiting
    assert len(posted(":inbox_tray:")) == 1


def test_nothing_is_dropped_unannounced_when_slack_refuses(stack, db):
    """The drop waits for its alert: with Slack failing, the objects stay and the check says
    so; the next evaluation posts and drops."""
    now = datetime.now(UTC)
    HistoryQueue(db).store("raw", FLOW, "run-9", "k", b"x", 1, now - timedelta(days=8))

    def refuse(text: str) -> None:
        raise DeliveryError("Slack unreachable")

    kept = tend_history(db, now, timedelta(hours=3), timedelta(days=7), refuse)
    assert kept.dropped == [] and "nothing was dropped" in kept.problems[0]
    assert db[OBJECTS].count_documents({"run_id": "run-9"}) == 1
    posts: list[str] = []
    gone = tend_history(db, now, timedelta(hours=3), timedelta(days=7), posts.append)
    assert [h["run_id"] for h in gone.dropped] == ["run-9"] and "run run-9" in posts[0]
    assert db[OBJECTS].count_documents({"run_id": "run-9"}) == 0
