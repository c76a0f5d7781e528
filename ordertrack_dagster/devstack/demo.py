"""`make run` and `make dev`: the product against the embedded stack, through Dagster itself.

`run` materializes every flow with `dg launch`, exactly as ops would by hand, then
reads the run summary back from the Dagster instance; `dev` opens the UI on the same stack.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from ordertrack_dagster.devstack.processes import running_group
from ordertrack_dagster.devstack.seed import seed_stack
from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.flows import FLOWS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SUMMARY_ASSET = AssetKey("order_status_writes")
SUMMARY_COLUMNS = (
    ("selected", "selected"),
    ("polled", "polled"),
    ("updated", "updated"),
    ("no_change", "no change"),
    ("unmapped", "unmapped"),
    ("failed", "failed"),
    ("not_found", "not found"),
    ("deferred", "deferred"),
)


def prepare_dagster_home(workdir: Path) -> Path:
    """A fresh DAGSTER_HOME holding the project's instance settings (one run per flow)."""
    home = workdir / "dagster_home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


def dagster_env(stack_env: Mapping[str, str], home: Path) -> dict[str, str]:
    """This process's environment plus the stack's, for a `dagster` or `dg` child process
    (`dg` is told the project's environment is this one, else it warns that it is not active).
    """
    return {
        **os.environ,
        **stack_env,
        "DAGSTER_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "VIRTUAL_ENV": sys.prefix,
    }


def _dagster_command(program: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(sys.executable).parent / program), *args]


def launch_flow_command(flow: str) -> list[str]:
    """`dg launch` of the whole tracking group for one flow, from the project root (its
    [tool.dg] names the code location): the run `dagster asset materialize` makes, in this
    process, without Dagster 1.13's warning that the command is superseded."""
    return _dagster_command("dg", "launch", "--assets", "group:tracking", "--partition", flow)


def materialize_flow(flow: str, env: Mapping[str, str], log: Path) -> bool:
    """The whole tracking group of one flow, through `dg launch`."""
    command = launch_flow_command(flow)
    with (
        log.open("wb") as out,
        running_group(
            command, env=dict(env), cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT
        ) as process,
    ):
        return process.wait() == 0


def flow_summary(instance: DagsterInstance, flow: str) -> dict[str, Any]:
    """The figures of the flow's latest run, read from its materialization metadata."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=SUMMARY_ASSET, asset_partitions=[flow]), limit=1
    ).records
    if not records:
        return {}
    event = records[0].event_log_entry
    metadata = {key: value.value for key, value in event.asset_materialization.metadata.items()}
    stats = instance.get_run_stats(event.run_id)
    if stats.start_time and stats.end_time:
        metadata["seconds"] = round(stats.end_time - stats.start_time, 1)
    metadata["run_id"] = event.run_id
    return metadata


def format_summary(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table: one line per flow, then the status changes per canonical status."""
    header = ["flow", *(label for _, label in SUMMARY_COLUMNS), "seconds"]
    rows = [header]
    for flow, summary in summaries.items():
        if not summary:
            rows.append([flow, *(["-"] * (len(header) - 2)), "failed"])
            continue
        rows.append(
            [flow, *(str(summary.get(key, 0)) for key, _ in SUMMARY_COLUMNS),
             str(summary.get("seconds", "?"))]
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]  # fmt: skip
    lines.append("")
    lines.append("updated per canonical status:")
    for flow, summary in summaries.items():
        per_status = summary.get("updated_per_status") or {}
        text = ", ".join(f"{status} {count}" for status, count in per_status.items()) or "none"
        lines.append(f"  {flow}: {text}")
    return "\n".join(lines)


def _effects_report(stack: EmbeddedStack) -> str:
    webhooks = stack.crm_webhooks()
    return (
        f"side effects: {len(stack.slack_messages())} Slack messages, "
        f"{len(webhooks)} CRM webhooks, {len(stack.mailbox())} emails"
    )


def run(orders: int, workdir: Path, seed: int) -> int:
    """Start the stack, seed it, run every flow once, print the summary, stop the stack."""
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"starting the embedded stack (logs in {workdir / 'logs'}) ...", flush=True)
    with EmbeddedStack(workdir=workdir) as stack:
        seeded = seed_stack(stack, orders, seed)
        print(f"seeded {sum(seeded.per_flow.values())} demo orders: {dict(seeded.per_flow)}")
        home = prepare_dagster_home(workdir)
        env = dagster_env(stack.env, home)
        failed = []
        for flow in FLOWS:
            started = time.perf_counter()
            ok = materialize_flow(flow, env, workdir / "logs" / f"materialize-{flow}.log")
            status = "ok" if ok else f"FAILED (see {workdir / 'logs'}/materialize-{flow}.log)"
            print(f"  {flow}: {status} in {time.perf_counter() - started:.1f}s", flush=True)
            if not ok:
                failed.append(flow)
        os.environ["DAGSTER_HOME"] = str(home)
        with DagsterInstance.get() as instance:
            summaries = {flow: flow_summary(instance, flow) for flow in FLOWS}
        print()
        print(format_summary(summaries))
        print(_effects_report(stack))
    print("stack stopped")
    return 1 if failed else 0


def dev(orders: int, workdir: Path, seed: int, port: int) -> int:
    """The stack, seeded, plus `dagster dev` on 127.0.0.1:<port>, until Ctrl-C."""
    workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedStack(workdir=workdir) as stack:
        seed_stack(stack, orders, seed)
        home = prepare_dagster_home(workdir)
        env = dagster_env(stack.env, home)
        env["DAGSTER_WEBSERVER_URL"] = f"http://127.0.0.1:{port}"
        print(f"Dagster UI on http://127.0.0.1:{port} (Ctrl-C stops it and the stack)", flush=True)
        workspace = str(PROJECT_ROOT / "workspace.yaml")
        command = _dagster_command(
            "dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-w", workspace
        )
        # Ctrl-C or `kill` raises KeyboardInterrupt here; leaving the block stops `dagster dev`
        # with everything it started (webserver, daemon, code servers), then the stack.
        with running_group(command, env=env, cwd=PROJECT_ROOT) as process:
            return process.wait()
