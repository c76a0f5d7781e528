"""The code location loads, and its shape matches the reviewed snapshot.

A change to assets, groups, partitions, lineage, checks, jobs, schedules, sensors or
resources shows up as a diff of `snapshots/definitions.json`; after reviewing it, refresh
the file with `UPDATE_SNAPSHOTS=1 make test`.
"""

import functools
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from dagster import Definitions

from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.settings import build_resources

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def describe(defs: Definitions) -> dict:
    """A stable, reviewable summary of the definitions."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def.get_partition_keys() if node.partitions_def else None
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": partitions,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "kinds": sorted(node.kinds),
            "checks": sorted(check.name for check in node.check_keys),
            "owners": sorted(node.owners),
        }
    repository = defs.get_repository_def()
    return {
        "assets": assets,
        "jobs": sorted(job.name for job in repository.get_all_jobs()),
        "schedules": {
            s.name: {"cron": s.cron_schedule, "job": s.job_name, "timezone": s.execution_timezone}
            for s in sorted(repository.schedule_defs, key=lambda s: s.name)
        },
        "sensors": sorted(sensor.name for sensor in repository.sensor_defs),
        "resources": sorted(defs.resources or {}),
    }


@functools.cache
def _load_in_clean_process() -> dict:
    """Load `defs` as the dagster CLI would: a fresh process, no stack environment (once for
    the tests here: a load takes seconds, and they only read it)."""
    code = (
        "import json; from ordertrack_dagster.definitions import defs; "
        "from ordertrack_dagster_tests.test_definitions import describe; "
        "print(json.dumps(describe(defs), sort_keys=True))"
    )
    env = {k: v for k, v in os.environ.items() if k != "ENV"}
    output = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, check=True,
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(output.strip().splitlines()[-1])


def test_definitions_match_the_snapshot():
    current = _load_in_clean_process()
    if os.environ.get("UPDATE_SNAPSHOTS") == "1" or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())


def test_every_tracking_asset_is_partitioned_by_flow():
    assets = _load_in_clean_process()["assets"]
    tracking = {name: spec for name, spec in assets.items() if spec["group"] == "tracking"}
    assert {"pending_orders", "raw_courier_responses", "status_updates",
            "order_status_writes"} <= set(tracking)  # fmt: skip
    for spec in tracking.values():
        assert spec["partitions"] == list(FLOWS)


def test_every_asset_has_an_owner():
    """Ops own the tracking flow and its effects, analysts their models: the UI and alerts
    name whom to ask."""
    assets = _load_in_clean_process()["assets"]
    owners = {name: spec["owners"] for name, spec in assets.items()}
    expected = {
        name: ["team:analytics"] if spec["group"] == "analytics" else ["team:ops"]
        for name, spec in assets.items()
    }
    assert owners == expected


def test_workspace_and_pyproject_point_at_the_code_location():
    workspace = (PROJECT_ROOT / "workspace.yaml").read_text()
    assert "module_name: ordertrack_dagster.definitions" in workspace
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    assert 'module_name = "ordertrack_dagster.definitions"' in pyproject
    for pin in ("dagster==1.13.27", "dagster-webserver==1.13.27", "dagster-aws==0.29.27",
                "dagster-slack==0.29.27", "dagster-dg-cli==1.13.27"):  # fmt: skip
        assert pin in pyproject
    # the `dg` CLI's project (`dg check defs`, `dg list defs`, `dg launch`) is the same location
    dg = tomllib.loads(pyproject)["tool"]["dg"]
    assert dg["directory_type"] == "project"
    assert dg["project"]["code_location_target_module"] == "ordertrack_dagster.definitions"


def test_resources_are_configured_from_the_environment_they_are_given():
    env = {"SLACK_API_URL": "http://127.0.0.1:9/api/", "SMTP_PORT": "2525", "SMTP_STARTTLS": "no"}
    resources = build_resources(env)
    assert resources["slack"].base_url == env["SLACK_API_URL"]
    assert (resources["smtp"].port, resources["smtp"].starttls) == (2525, False)
    assert resources["s3"].endpoint_url is None  # unset optional settings stay unset
    assert set(resources) == set(json.loads(SNAPSHOT.read_text())["resources"])
