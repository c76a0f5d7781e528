"""The tracking job (one flow per run) and the freshness job (the checks of every flow).

Selecting by group means side-effect assets added to the group later run in every scheduled
run without touching the schedules (contract §9: a scheduled tick runs the complete flow).
"""

from dagster import AssetSelection, define_asset_job

from ordertrack_dagster.orchestration.checks import CHECKS
from ordertrack_dagster.orchestration.operator import clear_courier_pause_job
from ordertrack_dagster.tables import GROUP

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


tracking_job = define_asset_job(
    name="tracking_job",
    selection=AssetSelection.groups(GROUP) - AssetSelection.checks(*CHECKS),
    tags={"dagster-k8s/config": TRACKING_RUN_K8S_CONFIG},
    description="One flow end to end: snapshot, courier answers, mapping, MongoDB write, "
    "side effects. The partition is the flow.",
)

freshness_job = define_asset_job(
    name="tracking_freshness_job",
    selection=AssetSelection.checks(*CHECKS),
    description="Whether each flow's due orders were polled recently (asset checks).",
)

JOBS = [tracking_job, freshness_job, clear_courier_pause_job]
