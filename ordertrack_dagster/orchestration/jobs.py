"""The flow's jobs (one flow per run) and the freshness job (the checks of every flow).

`tracking_job` is the whole flow in one run, what a person launches (UI, CLI, the demo).
Schedules and sensors split it (contract §1, §7 "Side effects off the critical path"):
`tracking_only_job` selects, fetches, maps and writes, and `tracking_effects_job` sends what
that run queued, in its own run, so the flow's next tracking run never waits for Slack, the
CRM, S3 or SMTP. Selecting by group means side-effect assets added to the group later join
the effects job (and `tracking_job`) without touching the schedules.
"""

from dagster import AssetSelection, PartitionedConfig, define_asset_job

from ordertrack_dagster.orchestration.checks import CHECKS
from ordertrack_dagster.orchestration.guards import EFFECTS_TAG, FLOW_TAG
from ordertrack_dagster.orchestration.operator import (
    clear_courier_pause_job,
    requeue_dead_letters_job,
)
from ordertrack_dagster.tables import (
    GROUP,
    ORDER_STATUS_WRITES,
    PENDING_ORDERS,
    RAW_COURIER_RESPONSES,
    STATUS_UPDATES,
    flow_partitions,
)

# The pod of one tracking run on Kubernetes (the `dagster-k8s/config` tag is read by
# K8sRunLauncher; other run launchers ignore it). BENCH.md: a run's peak RSS is at most 959 MiB
# at the flow's cap of 36,000 orders (a run never selects more; the highest under the courier's
# limit, writing while it fetched), so 1 GiB is requested and 1.5 GiB is the limit. Its CPU is
# about 30 s over a 6-minute run, much of it while fetching; the limit of one core keeps that
# fetch from being throttled.
TRACKING_RUN_K8S_CONFIG = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "250m", "memory": "1Gi"},
            "limits": {"cpu": "1", "memory": "1536Mi"},
        }
    }
}

#: A whole flow: the tracking group and the side effects in it, without the freshness checks.
FLOW_SELECTION = AssetSelection.groups(GROUP) - AssetSelection.checks(*CHECKS)
#: The critical path of a flow (contract §1): selection, fetch, mapping, the write and the
#: write's own checks.
TRACKING_SELECTION = AssetSelection.assets(
    PENDING_ORDERS, RAW_COURIER_RESPONSES, STATUS_UPDATES, ORDER_STATUS_WRITES
) - AssetSelection.checks(*CHECKS)
#: What follows the write: the outbox drain and the sending assets with their checks.
EFFECTS_SELECTION = FLOW_SELECTION - TRACKING_SELECTION


def _tagged_by_flow(tag: str) -> PartitionedConfig:
    """Every run of the job carries `tag=<flow>` when launched for a partition (a schedule, a
    sensor, the Launchpad, a backfill, an in-process run): the run queue's per-flow limit
    counts on it. `dagster job launch` takes no partition: its `--tags` must name it."""

    def tags(flow: str) -> dict[str, str]:
        return {tag: flow}

    return PartitionedConfig(
        partitions_def=flow_partitions,
        run_config_for_partition_key_fn=lambda _flow: {},
        tags_for_partition_key_fn=tags,
    )


tracking_job = define_asset_job(
    name="tracking_job",
    selection=FLOW_SELECTION,
    config=_tagged_by_flow(FLOW_TAG),
    tags={"dagster-k8s/config": TRACKING_RUN_K8S_CONFIG},
    description="One flow end to end: snapshot, courier answers, mapping, MongoDB write, "
    "side effects. The partition is the flow.",
)

tracking_only_job = define_asset_job(
    name="tracking_only_job",
    selection=TRACKING_SELECTION,
    config=_tagged_by_flow(FLOW_TAG),
    tags={"dagster-k8s/config": TRACKING_RUN_K8S_CONFIG},
    description="The tracking part of one flow (what schedules and sensors launch): snapshot, "
    "courier answers, mapping, MongoDB write. Its side effects follow in a "
    "tracking_effects_job run of the same flow. The partition is the flow.",
)

tracking_effects_job = define_asset_job(
    name="tracking_effects_job",
    selection=EFFECTS_SELECTION,
    config=_tagged_by_flow(EFFECTS_TAG),
    description="The side effects of one flow: drains the write's markers into the outbox and "
    "sends what is due (Slack, CRM, S3 logs, email), reporting the tracking run named by the "
    "`ordertrack/tracking_run` tag (else the flow's latest). The partition is the flow.",
)

repoll_orders_job = define_asset_job(
    name="repoll_orders_job",
    selection=FLOW_SELECTION,
    config=_tagged_by_flow(FLOW_TAG),
    tags={"dagster-k8s/config": TRACKING_RUN_K8S_CONFIG},
    description="Re-poll chosen orders of one flow now (the partition): the flow's own run "
    "limited to the orders named in `ops: {pending_orders: {config: {order_ids: [...], "
    "tracking_keys: [...]}}}`, asked within the courier's request budget, written and "
    "notified as any run. Its pending_orders metadata names what was asked and what the flow "
    "does not track; order_status_writes what changed.",
)

freshness_job = define_asset_job(
    name="tracking_freshness_job",
    selection=AssetSelection.checks(*CHECKS),
    description="Whether each flow's due orders were polled recently (asset checks).",
)

JOBS = [
    tracking_job,
    tracking_only_job,
    tracking_effects_job,
    freshness_job,
    clear_courier_pause_job,
    requeue_dead_letters_job,
    repoll_orders_job,
]
