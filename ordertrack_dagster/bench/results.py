"""Everything one benchmark produced, and the way back from bench.json to it: the report can be
rendered again from the figures of a past run without measuring anything."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil

from ordertrack_dagster.bench.fetch_cpu import FetchCpuFigures
from ordertrack_dagster.bench.freshness import FreshnessFigures
from ordertrack_dagster.bench.measure import RunFigures
from ordertrack_dagster.bench.scenarios import (
    HeadOfLineFigures,
    LimitedFigures,
    Scale,
    SharedLimitFigures,
)
from ordertrack_dagster.flows import RateBudget

T = TypeVar("T")
PACKAGES = ("dagster", "pymongo", "pandas", "pyarrow", "httpx", "SecantusDB", "moto", "uvicorn")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    return {
        "cores": os.cpu_count(),
        "cpu": model or platform.processor(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "packages": {name: importlib.metadata.version(name) for name in PACKAGES},
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Kept:
    """The measurements a report took from an earlier bench.json (`--keep`), and the date of
    the earliest run they come from: a combined report must not pass for one run."""

    parts: tuple[str, ...]
    generated_at: str
    #: whether those runs' databases had the product's indexes before their first run
    indexes_before_runs: bool = False


@dataclass
class Results:
    """Everything one benchmark produced."""

    mode: str
    scale: Scale
    latency_mean_ms: float
    latency_p99_ms: float
    machine: dict[str, Any]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    seconds: float
    flows: list[RunFigures]
    growth: list[RunFigures]
    limited: LimitedFigures | None
    shared: SharedLimitFigures | None = None
    head_of_line: HeadOfLineFigures | None = None
    bounded: RunFigures | None = None
    freshness: FreshnessFigures | None = None
    fetch_cpu: FetchCpuFigures | None = None
    generated_at: str = field(default_factory=_now)
    #: set when some measurements come from an earlier run (`keep_unmeasured`)
    kept: Kept | None = None
    #: each scenario's database got the product's indexes before its first run (in runs
    #: before 8 December 2026 the first run built them, inside its selection)
    indexes_before_runs: bool = True

    def runs(self) -> list[RunFigures]:
        return [*self.flows, *self.growth, *(self.limited.runs if self.limited else [])]

    def others_share(self) -> float:
        """Mean share of the machine taken by processes outside the benchmark during runs."""
        runs = self.runs()
        total = sum(run.whole_seconds for run in runs)
        return sum(r.others_cpu_share * r.whole_seconds for r in runs) / total if total else 0.0


def scale_as_dict(scale: Scale) -> dict[str, Any]:
    return {
        "throughput": scale.throughput,
        "growth": scale.growth,
        "limited_orders": scale.limited_orders,
        "courier_limit": scale.courier_limit.__dict__,
        "client_budget": scale.client_budget.__dict__,
        "shared": scale.shared,
        "head_of_line_healthy": scale.head_of_line_healthy,
        "bounded_orders": scale.bounded_orders,
    }


def _scale(data: dict[str, Any]) -> Scale:
    return Scale(
        throughput=dict(data["throughput"]),
        growth=tuple(data["growth"]),
        limited_orders=data["limited_orders"],
        courier_limit=RateBudget(**data["courier_limit"]),
        client_budget=RateBudget(**data["client_budget"]),
        # A bench.json written before these scenarios existed did not run them.
        shared=dict(data.get("shared", {})),
        head_of_line_healthy=data.get("head_of_line_healthy", 0),
        bounded_orders=data.get("bounded_orders", 0),
    )


def _optional(read: Callable[[Any], T], data: Any) -> T | None:
    """A part of bench.json that older runs (or a partial run) do not have."""
    return read(data) if data else None


def results_from_json(data: dict[str, Any]) -> Results:
    """The Results a bench.json was written from (its targets are recomputed, not read)."""
    limited = data["rate_limited"]
    return Results(
        mode=data["mode"],
        scale=_scale(data["settings"]["scale"]),
        latency_mean_ms=data["settings"]["latency_mean_ms"],
        latency_p99_ms=data["settings"]["latency_p99_ms"],
        machine=data["machine"],
        load_before=tuple(data["load_average_before"]),
        load_after=tuple(data["load_average_after"]),
        seconds=data["seconds"],
        flows=[RunFigures.from_dict(run) for run in data["flows"]],
        growth=[RunFigures.from_dict(run) for run in data["growth"]],
        limited=LimitedFigures.from_dict(limited) if limited else None,
        shared=_optional(SharedLimitFigures.from_dict, data.get("shared_limit")),
        head_of_line=_optional(HeadOfLineFigures.from_dict, data.get("head_of_line")),
        bounded=_optional(RunFigures.from_dict, data.get("bounded")),
        freshness=_optional(FreshnessFigures.from_dict, data.get("freshness")),
        fetch_cpu=_optional(FetchCpuFigures.from_dict, data.get("fetch_cpu")),
        generated_at=data["generated_at"],
        kept=_optional(_kept, data.get("kept")),
        indexes_before_runs=data["settings"].get("indexes_before_runs", False),
    )


def _kept(data: dict[str, Any]) -> Kept:
    return Kept(tuple(data["parts"]), data["generated_at"], data.get("indexes_before_runs", False))


def read_results(path: Path) -> Results:
    return results_from_json(json.loads(path.read_text()))


#: Each measurement's part name (`--only`) and the Results field holding its figures.
PART_FIELDS = {
    "flows": "flows",
    "growth": "growth",
    "limited": "limited",
    "shared": "shared",
    "head_of_line": "head_of_line",
    "bounded": "bounded",
    "freshness": "freshness",
    "fetch_cpu": "fetch_cpu",
}


def keep_unmeasured(new: Results, old: Results, measured: set[str]) -> Results:
    """`new`, with the figures of every part it did not measure taken from `old`, with the
    scale, machine and load they were measured at (the report's settings describe the runs,
    which are all `old`'s). Its time stays `new`'s own, and `kept` says which parts come from
    `old` and when that run was (the earliest, when `old` was itself combined)."""
    parts = tuple(part for part in PART_FIELDS if part not in measured)
    if not parts:
        return new
    earliest = min(old.kept.generated_at, old.generated_at) if old.kept else old.generated_at
    # per part: from the run that measured it (old's own or one old kept in turn)
    indexed = all(
        old.kept.indexes_before_runs
        if old.kept and part in old.kept.parts
        else old.indexes_before_runs
        for part in parts
    )
    return replace(
        new,
        scale=old.scale,
        machine=old.machine,
        load_before=old.load_before,
        load_after=old.load_after,
        kept=Kept(parts, earliest, indexed),
        **{PART_FIELDS[part]: getattr(old, PART_FIELDS[part]) for part in parts},
    )
