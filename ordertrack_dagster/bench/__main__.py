"""Command line of the benchmark: start the stack, measure, write BENCH.md and bench.json
(or, with --report-only, write them again from the figures of a past run)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ordertrack_dagster.bench import fetch_cpu, freshness
from ordertrack_dagster.bench.freshness_e2e import validate
from ordertrack_dagster.bench.report import write_report
from ordertrack_dagster.bench.results import Results, keep_unmeasured, machine, read_results
from ordertrack_dagster.bench.scenarios import (
    FULL,
    SMOKE,
    Bench,
    bounded,
    growth,
    head_of_line,
    rate_limited,
    shared_limit,
    throughput,
)
from ordertrack_dagster.devstack.demo import PROJECT_ROOT
from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.tracking.selection import SelectionPolicy

PARTS = (
    "flows",
    "growth",
    "limited",
    "shared",
    "head_of_line",
    "bounded",
    "freshness",
    "fetch_cpu",
)
#: Parts that need no server: measured before the stack starts, and without it when alone.
STANDALONE = {"fetch_cpu"}
#: The courier simulator's answer time, mean and p99 in ms: production's as measured, and a
#: tenth of it in smoke mode, which proves every figure is produced, not what it is (at
#: production's, the head-of-line runs' 960 one-key requests alone would wait 40 s).
LATENCY_MS = (130.0, 530.0)
SMOKE_LATENCY_MS = (13.0, 53.0)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ordertrack_dagster.bench", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="a few hundred orders: checks the benchmark runs"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where BENCH.md, bench.json and the plot go "
        "(default: the project root; with --smoke a new temporary directory)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="logs of the stack and of every run (default: temporary)"
    )
    parser.add_argument(
        "--latency-mean-ms",
        type=float,
        help=f"default {LATENCY_MS[0]:g} ({SMOKE_LATENCY_MS[0]:g} smoke)",
    )
    parser.add_argument(
        "--latency-p99-ms",
        type=float,
        help=f"default {LATENCY_MS[1]:g} ({SMOKE_LATENCY_MS[1]:g} smoke)",
    )
    parser.add_argument(
        "--only", choices=PARTS, action="append", help="run only this measurement (repeatable)"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="BENCH_JSON",
        help="take the figures of every measurement not run now from this bench.json, so one "
        "measurement can be taken again without losing the others",
    )
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="BENCH_JSON",
        help="measure nothing: write BENCH.md, bench.json and the plot again from the figures "
        "of this bench.json (default --out: the directory it is in)",
    )
    args = parser.parse_args(argv)
    mean_ms, p99_ms = SMOKE_LATENCY_MS if args.smoke else LATENCY_MS
    args.latency_mean_ms = mean_ms if args.latency_mean_ms is None else args.latency_mean_ms
    args.latency_p99_ms = p99_ms if args.latency_p99_ms is None else args.latency_p99_ms
    return args


def measure(args: argparse.Namespace) -> Results:
    """Start the embedded stack and take the measurements asked for."""
    scale = SMOKE if args.smoke else FULL
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ordertrack-bench-"))
    parts = set(args.only or PARTS)
    simulator_args = [
        "--latency-mean-ms", str(args.latency_mean_ms),
        "--latency-p99-ms", str(args.latency_p99_ms),
        "--no-rate-limits",
    ]  # fmt: skip
    print(f"benchmark ({'smoke' if args.smoke else 'full'}); logs in {workdir}", flush=True)
    started, load_before = time.perf_counter(), os.getloadavg()
    cpu_requests = fetch_cpu.SMOKE_REQUESTS if args.smoke else fetch_cpu.REQUESTS
    cpu = fetch_cpu.measure(requests=cpu_requests) if "fetch_cpu" in parts else None
    flows, grown, limited, shared, line, capped, fresh = [], [], None, None, None, None, None
    if parts - STANDALONE:
        with EmbeddedStack(workdir=workdir, simulator_args=simulator_args) as stack:
            bench = Bench(stack, workdir, args.latency_mean_ms)
            try:
                flows = throughput(bench, scale) if "flows" in parts else []
                grown = growth(bench, scale) if "growth" in parts else []
                limited = rate_limited(bench, scale) if "limited" in parts else None
                shared = shared_limit(bench, scale) if "shared" in parts else None
                line = head_of_line(bench, scale) if "head_of_line" in parts else None
                capped = bounded(bench, scale) if "bounded" in parts else None
                fresh = measure_freshness(bench, args.smoke) if "freshness" in parts else None
            finally:
                bench.close()
    return Results(
        mode="smoke" if args.smoke else "full",
        scale=scale,
        latency_mean_ms=args.latency_mean_ms,
        latency_p99_ms=args.latency_p99_ms,
        machine=machine(),
        load_before=load_before,
        load_after=os.getloadavg(),
        seconds=time.perf_counter() - started,
        flows=flows,
        growth=grown,
        limited=limited,
        shared=shared,
        head_of_line=line,
        bounded=capped,
        freshness=fresh,
        fetch_cpu=cpu,
    )


def measure_freshness(bench: Bench, smoke: bool) -> freshness.FreshnessFigures:
    """Detection delay: the model on its simulated clock, then its check end to end."""
    population = freshness.SMALL if smoke else freshness.PRODUCTION
    figures = freshness.measure_model(population, SelectionPolicy.from_env())
    figures.validation = validate(bench, smoke)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.report_only:
        out = args.out or args.report_only.parent
    else:
        out = args.out or (
            Path(tempfile.mkdtemp(prefix="ordertrack-bench-smoke-")) if args.smoke else PROJECT_ROOT
        )
    out.mkdir(parents=True, exist_ok=True)  # before measuring: a bad --out fails at once
    results = read_results(args.report_only) if args.report_only else measure(args)
    if args.keep and not args.report_only:
        results = keep_unmeasured(results, read_results(args.keep), set(args.only or PARTS))
    print("wrote " + ", ".join(str(path) for path in write_report(results, out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
