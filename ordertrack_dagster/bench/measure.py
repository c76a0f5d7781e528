"""One measured run: a flow's run of the tracking job through the `dagster` CLI, and its figures.

The run process is measured from the outside (wall time from launch to exit, including
Dagster's own start-up; CPU seconds from `wait4`) and from the inside by the probe (its MongoDB
commands and its peak RSS); the phases and the assets' own figures are read back from the Dagster
instance's step statistics and materialization events for the run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import psutil
from dagster import DagsterEventType, DagsterInstance, RunsFilter

from ordertrack_dagster.devstack.demo import PROJECT_ROOT
from ordertrack_dagster.effects.assets import EFFECT_ASSETS
from ordertrack_dagster.flows import Flow, RateBudget, get_flow
from ordertrack_dagster.orchestration import FLOW_TAG, tracking_job
from ordertrack_dagster.orchestration.guards import PARTITION_TAG
from ordertrack_dagster.tracking.assets import (
    order_status_writes,
    pending_orders,
    raw_courier_responses,
    status_updates,
)

#: Which Dagster steps (one per asset, named after it) make up each phase of a flow's run.
PHASES: dict[str, tuple[str, ...]] = {
    "selection": (pending_orders.op.name,),
    "fetch": (raw_courier_responses.op.name,),
    "mapping": (status_updates.op.name,),
    "write": (order_status_writes.op.name,),
    "effects": tuple(asset.op.name for asset in EFFECT_ASSETS),
}
#: Steps outside the phases (none in a tick's run) and the run's time outside any step.
OTHER = "other"
DAGSTER = "dagster"


def fetch_bound_seconds(
    flow: Flow, keys: int, requests: int, mean_latency_s: float, budget: RateBudget | None
) -> float:
    """The least time the fetch can take at this concurrency, pacing and mean latency.

    Batched flows: `ceil(keys / batch) / in-flight x mean latency`. One-key flows are paced:
    each worker sends its share one after another, pausing between its calls. A client-side
    request budget smaller than the requests adds whole windows of waiting.
    """
    if flow.batch_size > 1 and not flow.pause_seconds:
        bound = math.ceil(keys / flow.batch_size) / flow.workers * mean_latency_s
    else:
        per_worker = math.ceil(keys / flow.workers)
        bound = per_worker * mean_latency_s + max(0, per_worker - 1) * flow.pause_seconds
    if budget is not None and requests > budget.requests:
        bound = max(bound, (math.ceil(requests / budget.requests) - 1) * budget.window_seconds)
    return bound


@dataclass
class MongoFigures:
    """Round trips and seconds waited on MongoDB, in total and per phase and per command."""

    round_trips: int = 0
    wait_seconds: float = 0.0
    per_phase: dict[str, dict[str, float]] = field(default_factory=dict)
    per_command: dict[str, int] = field(default_factory=dict)


@dataclass
class RunFigures:
    """Everything one run yields; `per_1000` figures are per 1,000 selected orders."""

    label: str
    flow: str
    ok: bool
    run_id: str | None
    orders: int  # selected by the run
    keys_asked: int
    requests: int
    whole_seconds: float  # launch to exit of the run process, Dagster's start-up included
    phase_seconds: dict[str, float]
    fetch_seconds: float  # the fetch itself, inside its step
    fetch_bound_seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    mongo: MongoFigures
    service_cpu_seconds: dict[str, float]
    others_cpu_share: float  # of the machine, used by processes other than ours
    assets: dict[str, dict[str, Any]]  # each asset's materialization metadata
    materialized_at: dict[str, float]  # and when it was materialized (epoch seconds)
    started_at: float
    ended_at: float

    @property
    def fetch_ratio(self) -> float | None:
        return self.fetch_seconds / self.fetch_bound_seconds if self.fetch_bound_seconds else None

    def per_1000(self, value: float) -> float | None:
        return value * 1000 / self.orders if self.orders else None

    def as_dict(self) -> dict[str, Any]:
        data = {key: value for key, value in self.__dict__.items() if key != "mongo"}
        data["mongo"] = self.mongo.__dict__
        data["fetch_ratio"] = self.fetch_ratio
        data["mongodb_round_trips_per_1000"] = self.per_1000(self.mongo.round_trips)
        data["cpu_seconds_per_1000"] = self.per_1000(self.cpu_seconds)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunFigures:
        """The figures `as_dict` wrote (what it derives is derived again)."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name != "mongo"}
        return cls(**values, mongo=MongoFigures(**data["mongo"]))


def _service_cpu(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each stack service, children included."""
    seconds = {}
    for name, pid in pids.items():
        try:
            process = psutil.Process(pid)
            tree = [process, *process.children(recursive=True)]
            seconds[name] = sum(p.cpu_times().user + p.cpu_times().system for p in tree)
        except psutil.NoSuchProcess:
            seconds[name] = 0.0
    return seconds


def _busy_cpu_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _probe_command(record: Path, flow: str, job: str) -> list[str]:
    """A run as automation launches it: the job, the flow's partition, its tags.

    `dagster job execute`, not `dg launch`: `dg launch` takes no tags, and a tick's run
    carries the flow tag; the run prints Dagster's warning that the command is superseded.
    """
    tags = {PARTITION_TAG: flow, FLOW_TAG: flow}
    return [
        sys.executable, "-m", "ordertrack_dagster.bench.probe", str(record),
        "job", "execute", "-m", "ordertrack_dagster.definitions",
        "-j", job, "--tags", json.dumps(tags),
    ]  # fmt: skip


def materialize_measured(
    label: str,
    flow_key: str,
    env: Mapping[str, str],
    home: Path,
    logs: Path,
    service_pids: Mapping[str, int],
    mean_latency_s: float,
    job: str = tracking_job.name,
) -> RunFigures:
    """Materialize one flow through the `dagster` CLI and measure it: by default the whole flow
    in one run (`tracking_job`: the tracking and the side effects a tick's two runs share)."""
    logs.mkdir(parents=True, exist_ok=True)
    record = logs / f"{label}.mongodb.json"
    record.unlink(missing_ok=True)
    services_before, busy_before = _service_cpu(service_pids), _busy_cpu_seconds()
    started_at, started = time.time(), time.perf_counter()
    with (logs / f"{label}.log").open("wb") as log:
        process = subprocess.Popen(
            _probe_command(record, flow_key, job),
            env=dict(env),
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    whole = time.perf_counter() - started
    ended_at = time.time()
    services_after, busy_after = _service_cpu(service_pids), _busy_cpu_seconds()
    cpu = usage.ru_utime + usage.ru_stime
    service_cpu = {name: services_after[name] - services_before[name] for name in service_pids}
    ours = cpu + sum(service_cpu.values())
    others = max(0.0, busy_after - busy_before - ours) / (whole * (os.cpu_count() or 1))
    with DagsterInstance.from_config(str(home)) as instance:
        # this flow's latest run: another flow's run may be running at the same time
        records = instance.get_run_records(RunsFilter(tags={PARTITION_TAG: flow_key}), limit=1)
        run_id = records[0].dagster_run.run_id if records else None
        steps = _step_windows(instance, run_id) if run_id else {}
        assets, materialized_at = _materializations(instance, run_id) if run_id else ({}, {})
    probed = json.loads(record.read_text()) if record.exists() else {}
    flow = get_flow(flow_key)
    fetch = assets.get("raw_courier_responses", {})
    selected = int(assets.get("pending_orders", {}).get("selected", 0))
    requests = int(fetch.get("requests", 0))
    keys = int(fetch.get("keys_asked", 0))
    return RunFigures(
        label=label,
        flow=flow_key,
        ok=process.returncode == 0,
        run_id=run_id,
        orders=selected,
        keys_asked=keys,
        requests=requests,
        whole_seconds=whole,
        phase_seconds=_phase_seconds(steps, whole),
        fetch_seconds=float(fetch.get("fetch_seconds", 0.0)),
        fetch_bound_seconds=fetch_bound_seconds(
            flow, keys, requests, mean_latency_s, flow.rate_budget_in(env)
        ),
        cpu_seconds=cpu,
        peak_rss_mib=probed.get("peak_rss_kib", 0) / 1024,
        mongo=_mongo_figures(probed.get("commands", []), steps),
        service_cpu_seconds=service_cpu,
        others_cpu_share=others,
        assets=assets,
        materialized_at=materialized_at,
        started_at=started_at,
        ended_at=ended_at,
    )


def _step_windows(instance: DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    return {
        stats.step_key: (stats.start_time, stats.end_time)
        for stats in instance.get_run_step_stats(run_id)
        if stats.start_time is not None and stats.end_time is not None
    }


def _materializations(
    instance: DagsterInstance, run_id: str
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Each asset's materialization metadata in this run, as plain values, and its time."""
    metadata, timestamps = {}, {}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        if materialization is not None:
            name = materialization.asset_key.to_user_string()
            metadata[name] = {key: value.value for key, value in materialization.metadata.items()}
            timestamps[name] = entry.timestamp
    return metadata, timestamps


def _phase_of(step: str) -> str:
    return next((phase for phase, steps in PHASES.items() if step in steps), OTHER)


def _phase_seconds(steps: Mapping[str, tuple[float, float]], whole: float) -> dict[str, float]:
    """Step wall time summed per phase; what is left of the whole run is Dagster's own."""
    seconds = dict.fromkeys([*PHASES, OTHER], 0.0)
    for step, (start, end) in steps.items():
        seconds[_phase_of(step)] += end - start
    seconds[DAGSTER] = max(0.0, whole - sum(seconds.values()))
    return seconds


def _mongo_figures(
    commands: list[tuple[float, float, str, str]], steps: Mapping[str, tuple[float, float]]
) -> MongoFigures:
    """The probe's commands, each put in the phase whose step was running when it was sent."""
    figures = MongoFigures(round_trips=len(commands))
    windows = sorted((start, end, _phase_of(step)) for step, (start, end) in steps.items())
    for at, seconds, name, collection in commands:
        phase = next((p for start, end, p in windows if start <= at <= end), DAGSTER)
        tally = figures.per_phase.setdefault(phase, {"round_trips": 0, "wait_seconds": 0.0})
        tally["round_trips"] += 1
        tally["wait_seconds"] += seconds
        figures.wait_seconds += seconds
        key = f"{name} {collection}".strip()
        figures.per_command[key] = figures.per_command.get(key, 0) + 1
    return figures
