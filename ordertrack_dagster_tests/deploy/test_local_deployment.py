"""deploy/ runs: a scheduled flow end to end on PostgreSQL, four processes, through the UI's API.

The webserver, the daemon and the code server share nothing but the Postgres instance and the
workspace; a tick of the flow's schedule must launch a run that succeeds, a second run of the
flow must wait in the queue while the first runs, and all of it must be in Postgres.
"""

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from ordertrack_dagster.orchestration.guards import FLOW_TAG, PARTITION_TAG
from ordertrack_dagster.orchestration.schedules import schedule_name
from ordertrack_dagster_tests.deploy.browser import DOCS_IMAGES, photograph
from ordertrack_dagster_tests.deploy.conftest import FLOW
from ordertrack_dagster_tests.deploy.graphql import (
    Run,
    flow_runs,
    launch_flow_run,
    run_status,
    schedule_ticks,
    start_schedule,
)
from ordertrack_dagster_tests.deploy.local_deployment import Deployment
from ordertrack_dagster_tests.helpers import orders_by_id

pytestmark = pytest.mark.slow

# The next minute's tick, plus a run of slow courier answers.
TICK_DEADLINE_S = 150
RUN_DEADLINE_S = 120
IN_FLIGHT = {"STARTING", "STARTED"}
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def _wait_for(
    deployment: Deployment, what: str, deadline_s: float, found: Callable[[], object]
) -> object:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if value := found():
            return value
        time.sleep(1)
    pytest.fail(f"{what} within {deadline_s} s\n{deployment.all_logs()}")


def _scheduled_run(deployment: Deployment) -> Run | None:
    runs = flow_runs(deployment, {"dagster/schedule_name": schedule_name(FLOW)})
    return runs[-1] if runs else None


def test_a_tick_runs_the_flow_and_a_second_run_waits_for_it(
    deployment, deploy_stack, deploy_db, deploy_orders
):
    started = datetime.now(UTC)
    state = start_schedule(deployment, schedule_name(FLOW))
    assert state == "RUNNING"

    first = _wait_for(
        deployment,
        "no scheduled run started",
        TICK_DEADLINE_S,
        lambda: (run := _scheduled_run(deployment)) and run.status in IN_FLIGHT | FINISHED and run,
    )
    assert first.status in IN_FLIGHT, f"the first run finished before a second could wait: {first}"

    # The same flow again, as an operator re-runs the partition from the UI.
    second_id = launch_flow_run(deployment, FLOW)
    waited_while_first_ran = 0
    deadline = time.monotonic() + RUN_DEADLINE_S
    while (first_status := run_status(deployment, first.run_id)) not in FINISHED:
        assert time.monotonic() < deadline, deployment.all_logs()
        second_status = run_status(deployment, second_id)
        assert second_status == "QUEUED", f"second run {second_status} while the first ran"
        waited_while_first_ran += 1
        time.sleep(1)
    assert first_status == "SUCCESS", deployment.all_logs()
    assert waited_while_first_ran >= 2
    # The scheduled run polled the flow's orders and wrote what the courier answered.
    orders = orders_by_id(deploy_db, deploy_orders)
    assert {doc["courier_status"] for doc in orders.values()} == {"ud-in_transit", "dl-delivered"}
    assert all(doc["last_tracking_time"] >= started for doc in orders.values())

    # Once the first is done the queue lets the second go, and it succeeds too.
    _wait_for(
        deployment,
        "the queued run did not finish",
        RUN_DEADLINE_S,
        lambda: run_status(deployment, second_id) in FINISHED,
    )
    assert run_status(deployment, second_id) == "SUCCESS", deployment.all_logs()

    ticks = schedule_ticks(deployment, schedule_name(FLOW))
    assert any(first.run_id in tick["runIds"] for tick in ticks if tick["status"] == "SUCCESS")

    # All of it is in Postgres: the runs, their events, the schedule's ticks.
    postgres = deployment.postgres
    stored = dict(postgres.query("SELECT run_id, status FROM runs"))
    assert stored[first.run_id] == "SUCCESS" and stored[second_id] == "SUCCESS"
    events = postgres.query(
        "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
        first.run_id,
        "ASSET_MATERIALIZATION",
    )
    assert events[0][0] >= 4  # the tracking assets of the flow's partition
    [(tick_rows,)] = postgres.query("SELECT count(*) FROM job_ticks WHERE status = 'SUCCESS'")
    assert tick_rows >= 1

    # The first run's tags are the schedule's: the flow's, so its queue slot is the flow's.
    assert first.tags[FLOW_TAG] == FLOW and first.tags[PARTITION_TAG] == FLOW

    # Step logs went to S3 (the stack's), where any webserver can read them.
    listing = deploy_stack.s3_client().list_objects_v2(
        Bucket=deploy_stack.bucket, Prefix="dagster/compute-logs/"
    )
    keys = [item["Key"] for item in listing.get("Contents", [])]
    assert any(first.run_id in key for key in keys), keys


# The runbook's pictures (docs/operations.md): the page, and what it must show.
SCREENSHOTS = {
    "tracking-lineage.png": "/locations/ordertrack/asset-groups/tracking/lineage",
    "raw-courier-responses-partition.png": (
        f"/assets/raw_courier_responses?view=partitions&partition={FLOW}"
    ),
    "automation.png": "/automation",
}
ANALYTICS_MODEL = "/assets/analytics/courier_runs"
# The ops jobs' launchpads (docs/operations.md), each with an example of its typed config.
JOB = "/locations/ordertrack/jobs/{}/playground/setup?" + "config={}"
OPS_JOBS = {
    "ops-clear-courier-pause.png": (
        "clear_courier_pause_job",
        "ops:\n  clear_courier_pause:\n    config:\n      scopes: [shiprocket]\n",
    ),
    "ops-requeue-dead-letters.png": (
        "requeue_dead_letters_job",
        "ops:\n  requeue_dead_letters:\n    config:\n      flows: [shiprocket]\n"
        "      effects: [crm_rto_webhooks]\n      given_up_within_hours: 24\n",
    ),
    "ops-repoll-orders.png": (
        "repoll_orders_job",
        "ops:\n  pending_orders:\n    config:\n      order_ids: [OT-1001]\n"
        "      tracking_keys: [AWB123456789]\n",
    ),
}


def _skip_community_dialog(deployment: Deployment) -> None:
    """What "Skip" on the community dialog records (in the instance), so it covers no picture."""
    deployment.graphql("mutation SetNuxSeen { setNuxSeen }")


def test_screenshots_of_the_ui_for_the_runbook(deployment, tmp_path):
    """Headless Chromium against the local deployment, once a run of the flow succeeded.

    `UPDATE_SCREENSHOTS=1` writes them into docs/images/ (look at them before committing).
    """
    if not any(run.status == "SUCCESS" for run in flow_runs(deployment, {PARTITION_TAG: FLOW})):
        run_id = launch_flow_run(deployment, FLOW)
        _wait_for(
            deployment,
            "no run to show",
            RUN_DEADLINE_S,
            lambda: run_status(deployment, run_id) == "SUCCESS",
        )
    _skip_community_dialog(deployment)
    folder = _images_folder(tmp_path)
    pages = {folder / name: deployment.webserver_url + path for name, path in SCREENSHOTS.items()}
    for image in photograph(pages, tmp_path):
        assert image.read_bytes().startswith(b"\x89PNG"), image.name
        assert image.stat().st_size > 20_000, f"{image.name} looks empty"


def test_the_ops_jobs_launchpads_and_an_analytics_models_columns(deployment, tmp_path):
    """Each ops job opens in the launchpad with its typed config; a model's page lists the
    columns its query returns before it is materialized. `UPDATE_SCREENSHOTS=1` as above."""
    _skip_community_dialog(deployment)
    folder = _images_folder(tmp_path)
    model = folder / "analytics-model.png"
    launchpads = {
        folder / name: (job, deployment.webserver_url + JOB.format(job, quote(config)))
        for name, (job, config) in OPS_JOBS.items()
    }
    pages = {model: deployment.webserver_url + ANALYTICS_MODEL}
    doms = photograph(pages | {image: url for image, (_, url) in launchpads.items()}, tmp_path)
    for column in ("most_common_error", "latency_ms_p99", "not_answered"):
        assert column in doms[model], f"the model's page does not list {column}"
    for image, (job, _) in launchpads.items():
        assert job in doms[image], f"{job} is not in the UI"
        assert image.read_bytes().startswith(b"\x89PNG"), image.name


def _images_folder(tmp_path: Path) -> Path:
    """docs/images/ with `UPDATE_SCREENSHOTS=1`, else the test's own folder."""
    return DOCS_IMAGES if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
