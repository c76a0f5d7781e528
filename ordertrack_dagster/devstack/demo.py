"""`make run` and `make dev`: the product against the embedded stack, through Dagster itself.

`run` materializes every flow with `dg launch`, exactly as ops would by hand, showing each
fetch's progress as the run logs it, then reads the run summary back from the Dagster
instance; `dev` opens the UI on the same Dagster instance, so the demo's runs, materialized
partitions and check results are there to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from ordertrack_dagster.devstack.processes import running_group
from ordertrack_dagster.devstack.seed import seed_stack
from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.tracking.streaming import STREAM_EVERY_ENV, parse_fetch_progress

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


#: How often the demo's fetches report (and write) what they got: often enough for the
#: progress to move; production keeps the default.
DEMO_STREAM_EVERY_SECONDS = "2"
#: Without a terminal, a flow's progress line is printed at most this often.
PLAIN_PROGRESS_EVERY_SECONDS = 10.0
_BAR_WIDTH = 30


def prepare_dagster_home(workdir: Path, *, fresh: bool = True) -> Path:
    """DAGSTER_HOME holding the project's instance settings (one run per flow), its storage
    created: runs launched together on a new home would each create the SQLite tables and
    race ("table secondary_indexes already exists"), and one would die at start. `make run`
    and the benchmark start it afresh; `make dev` keeps what the last `make run` stored."""
    home = workdir / "dagster_home"
    if fresh:
        shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    with DagsterInstance.from_config(str(home)):
        pass  # opening the instance creates its run, event log and schedule storage
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


def demo_env(stack_env: Mapping[str, str], home: Path) -> dict[str, str]:
    """`dagster_env` as the demo runs it: fetches report every 2 s so the progress moves
    (the benchmark and the tests keep production's interval unless they set their own)."""
    return {STREAM_EVERY_ENV: DEMO_STREAM_EVERY_SECONDS, **dagster_env(stack_env, home)}


class FlowProgress:
    """One flow's fetch as it goes: a bar redrawn in place on a terminal; otherwise (CI, a
    pipe) a plain line when the figures change, at most every `every` seconds."""

    def __init__(self, flow: str, out: TextIO, every: float = PLAIN_PROGRESS_EVERY_SECONDS):
        self.flow = flow
        self.out = out
        self.every = every
        self.terminal = out.isatty()
        self._shown: tuple[int, int] | None = None
        self._shown_at = -float("inf")

    def update(self, asked: int, selected: int) -> None:
        now = time.monotonic()
        if (asked, selected) == self._shown or (
            not self.terminal and now - self._shown_at < self.every and asked < selected
        ):
            return
        self._shown, self._shown_at = (asked, selected), now
        if self.terminal:
            done = _BAR_WIDTH * asked // max(selected, 1)
            bar = "#" * done + "-" * (_BAR_WIDTH - done)
            self.out.write(f"\r  {self.flow}: [{bar}] asked {asked} of {selected}")
        else:
            self.out.write(f"  {self.flow}: asked {asked} of {selected} tracking keys\n")
        self.out.flush()

    def finish(self, text: str) -> None:
        """The flow's closing line (the bar's line is ended first)."""
        if self.terminal and self._shown is not None:
            self.out.write("\n")
        self.out.write(f"  {self.flow}: {text}\n")
        self.out.flush()


def _follow(log: Path, position: int, on_line: Callable[[str], None]) -> int:
    """Hand the complete lines written to `log` since `position` to `on_line`; the new position."""
    try:
        with log.open("rb") as handle:
            handle.seek(position)
            chunk = handle.read()
    except FileNotFoundError:
        return position
    complete = chunk[: chunk.rfind(b"\n") + 1]
    for line in complete.decode(errors="replace").splitlines():
        on_line(line)
    return position + len(complete)


def _dagster_command(program: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(sys.executable).parent / program), *args]


def launch_flow_command(flow: str) -> list[str]:
    """`dg launch` of the whole tracking group for one flow, from the project root (its
    [tool.dg] names the code location): the run `dagster asset materialize` makes, in this
    process, without Dagster 1.13's warning that the command is superseded."""
    return _dagster_command("dg", "launch", "--assets", "group:tracking", "--partition", flow)


def materialize_flow(
    flow: str, env: Mapping[str, str], log: Path, progress: FlowProgress | None = None
) -> bool:
    """The whole tracking group of one flow, through `dg launch`; `progress` hears of each
    fetch progress line the run logs."""

    def on_line(line: str) -> None:
        if progress is not None and (figures := parse_fetch_progress(line)):
            progress.update(*figures)

    command = launch_flow_command(flow)
    position = 0
    with (
        log.open("wb") as out,
        running_group(
            command, env=dict(env), cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT
        ) as process,
    ):
        while process.poll() is None:
            position = _follow(log, position, on_line)
            time.sleep(0.5)
        _follow(log, position, on_line)
        return process.returncode == 0


def materialize_flows(
    flows: Iterable[str], env: Mapping[str, str], logs: Path, out: TextIO
) -> list[str]:
    """Each flow in turn, its progress shown on `out`; the flows that failed."""
    failed = []
    for flow in flows:
        progress = FlowProgress(flow, out)
        log = logs / f"materialize-{flow}.log"
        started = time.perf_counter()
        ok = materialize_flow(flow, env, log, progress)
        status = "ok" if ok else f"FAILED (see {log})"
        progress.finish(f"{status} in {time.perf_counter() - started:.1f}s")
        if not ok:
            failed.append(flow)
    return failed


def read_summaries(home: Path, flows: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each flow's latest run summary, from the Dagster instance in `home`."""
    with DagsterInstance.from_config(str(home)) as instance:
        return {flow: flow_summary(instance, flow) for flow in flows}


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


def stored_objects(s3_client: Any, bucket: str) -> dict[str, int]:
    """How many objects the runs stored per top-level folder pair (`ordertrack/<asset>`)."""
    counts: dict[str, int] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            folder = "/".join(item["Key"].split("/")[:2])
            counts[folder] = counts.get(folder, 0) + 1
    return counts


def where_next(workdir: Path, bucket: str, objects: Mapping[str, int]) -> str:
    """What to look at after the demo: the UI on the same instance, the logs, the S3 output."""
    landed = "\n".join(
        f"    s3://{bucket}/{folder}/  {count} objects" for folder, count in sorted(objects.items())
    )
    return (
        "where to look next:\n"
        "  make dev      the Dagster UI on http://127.0.0.1:3000 with these runs, their\n"
        "                materializations and check results (same working directory)\n"
        f"  logs          {workdir / 'logs'} (materialize-<flow>.log: each run's own log)\n"
        "  S3            what the runs stored (the embedded S3 keeps it in memory, so it went\n"
        f"                with the stack; runs launched in `make dev` store their own):\n"
        f"{landed or '    none'}"
    )


def run(orders: int, workdir: Path, seed: int) -> int:
    """Start the stack, seed it, run every flow once, print the summary, stop the stack."""
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"starting the embedded stack (logs in {workdir / 'logs'}) ...", flush=True)
    with EmbeddedStack(workdir=workdir) as stack:
        seeded = seed_stack(stack, orders, seed)
        print(f"seeded {sum(seeded.per_flow.values())} demo orders: {dict(seeded.per_flow)}")
        home = prepare_dagster_home(workdir, fresh=True)
        failed = materialize_flows(FLOWS, demo_env(stack.env, home), workdir / "logs", sys.stdout)
        print()
        print(format_summary(read_summaries(home, FLOWS)))
        print(_effects_report(stack))
        objects = stored_objects(stack.s3_client(), stack.bucket)
    print("stack stopped")
    print()
    print(where_next(workdir, stack.bucket, objects))
    return 1 if failed else 0


def dev(orders: int, workdir: Path, seed: int, port: int) -> int:
    """The stack, seeded, plus `dagster dev` on 127.0.0.1:<port>, until Ctrl-C."""
    workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedStack(workdir=workdir) as stack:
        seed_stack(stack, orders, seed)
        home = prepare_dagster_home(workdir, fresh=False)
        env = demo_env(stack.env, home)
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
