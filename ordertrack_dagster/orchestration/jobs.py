"""The tracking job (one flow per run) and the freshness job (the checks of every flow).

Selecting by group means side-effect assets added to the group later run in every scheduled
run without touching the schedules (SPEC §9: a scheduled tick runs the complete flow).
"""

from dagster import AssetSelection, define_asset_job

from ordertrack_dagster.orchestration.checks import CHECKS
from ordertrack_dagster.tables import GROUP

tracking_job = define_asset_job(
    name="tracking_job",
    selection=AssetSelection.groups(GROUP) - AssetSelection.checks(*CHECKS),
    description="One flow end to end: snapshot, courier answers, mapping, MongoDB write, "
    "side effects. The partition is the flow.",
)

freshness_job = define_asset_job(
    name="tracking_freshness_job",
    selection=AssetSelection.checks(*CHECKS),
    description="Whether each flow's due orders were polled recently (asset checks).",
)

JOBS = [tracking_job, freshness_job]
