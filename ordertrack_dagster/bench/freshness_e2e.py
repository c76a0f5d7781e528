"""The freshness model checked end to end: the flow runs through Dagster on the embedded stack
against the simulator at a modest time compression, and the detection delay is computed from
the simulator's scan times against our MongoDB write times; the model then runs the same flow,
population size and tick interval on its simulated clock, and the two are compared.

The simulator moves life cycles `time_scale` times faster than the wall clock, so every wall
time here is read back in simulated seconds (wall seconds x time scale) before comparing.
"""

from __future__ import annotations

import bisect
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ordertrack_dagster.bench.freshness import (
    Adaptive,
    Delays,
    FreshnessModel,
    LifeCycles,
    Population,
    tally,
)
from ordertrack_dagster.bench.scenarios import UNLIMITED_BUDGET, Bench
from ordertrack_dagster.tracking.selection import SelectionPolicy

VALIDATION_FLOW = "delhivery_b2c"


@dataclass(frozen=True)
class ValidationScale:
    orders: int  # shipments seeded and polled each run
    runs: int  # back-to-back runs of the flow
    time_scale: float  # simulated seconds per wall second


FULL_VALIDATION = ValidationScale(orders=2_000, runs=6, time_scale=30.0)
SMOKE_VALIDATION = ValidationScale(orders=50, runs=2, time_scale=120.0)


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def end_to_end(bench: Bench, scale: ValidationScale) -> dict[str, Any]:
    """The flow's runs one after another; per change at the courier, its delay to our write."""
    simulator = bench.stack.simulator
    previous_scale = float(simulator.settings()["time_scale"])
    simulator.update_settings(time_scale=scale.time_scale)
    polls: dict[str, list[tuple[float, float]]] = defaultdict(list)  # key -> (asked, written)
    run_starts: list[float] = []
    try:
        counts = {VALIDATION_FLOW: scale.orders}
        with bench.database("bench_freshness", counts) as database:
            keys = bench.due_keys(database, VALIDATION_FLOW)
            for number in range(1, scale.runs + 1):
                figures = bench.run(
                    f"freshness-{number}",
                    VALIDATION_FLOW,
                    database,
                    UNLIMITED_BUDGET,
                    must_succeed=False,
                )
                if not figures.ok:
                    return {"ok": False, "runs": len(run_starts)}
                run_starts.append(figures.started_at)
                raw = bench.raw_responses(figures)
                answered = raw[raw["state"] == "answered"]
                asked = dict(
                    zip(answered["tracking_key"], answered["fetched_at"].map(_ts), strict=True)
                )
                written = bench.written_at(database, VALIDATION_FLOW, asked)
                for key, at in asked.items():
                    if key in written:
                        polls[key].append((at, written[key]))
            timelines = {
                key: simulator.shipment(VALIDATION_FLOW, key)["events"] for key in sorted(keys)
            }
    finally:
        simulator.update_settings(time_scale=previous_scale)
    return scan_to_write_delays(scale, run_starts, polls, timelines)


def _ts(value: Any) -> float:
    return value.timestamp()


def scan_to_write_delays(
    scale: ValidationScale,
    run_starts: list[float],
    polls: dict[str, list[tuple[float, float]]],
    timelines: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """Each change's delay from its scan to our write, in simulated seconds, counting only
    changes after the first run started (before it, nobody was asking)."""
    lifecycles = LifeCycles(seed=1)  # only the courier's status texts are read
    origin = run_starts[0]

    def simulated(wall: float) -> float:
        return (wall - origin) * scale.time_scale

    by_step: dict[str, Delays] = defaultdict(Delays)
    last_write = max((written for kept in polls.values() for _, written in kept), default=origin)
    for key, events in timelines.items():
        steps = [event["step"] for event in events]
        starts = [simulated(_epoch(event["at"])) for event in events]
        seen = -1
        for asked, written in polls.get(key, []):
            position = bisect.bisect_right(starts, simulated(asked)) - 1
            changes = lifecycles.changes(VALIDATION_FLOW, steps, seen, position)
            tally(by_step, steps, starts, changes, simulated(written), lambda at: at > 0)
            seen = max(seen, position)
        for index in lifecycles.changes(VALIDATION_FLOW, steps, seen, len(steps) - 1):
            if 0 < starts[index] <= simulated(last_write):
                by_step[steps[index]].pending += 1
    spacing = [b - a for a, b in zip(run_starts, run_starts[1:], strict=False)]
    every = Delays(
        [x for d in by_step.values() for x in d.delays],
        sum(d.missed for d in by_step.values()),
        sum(d.pending for d in by_step.values()),
    )
    return {
        "ok": True,
        "runs": len(run_starts),
        "interval_s": statistics.fmean(spacing) * scale.time_scale if spacing else None,
        "span_s": simulated(last_write),
        "all": every.summary(),
    }


def model_alike(scale: ValidationScale, end_to_end_figures: dict[str, Any]) -> dict[str, Any]:
    """The model with the end-to-end check's flow, population and tick interval, under the
    policy the product runs (adaptive; with every order under the cap, all are polled each
    run, as end to end)."""
    interval = end_to_end_figures["interval_s"]
    hours = end_to_end_figures["span_s"] / 3600
    population = Population(
        live={VALIDATION_FLOW: scale.orders},
        warmup_hours=2 * interval / 3600,
        measured_hours=hours,
        tail_hours=2 * interval / 3600,
    )
    selection = SelectionPolicy.from_env()
    model = FreshnessModel(Adaptive(), population, selection, intervals={VALIDATION_FLOW: interval})
    return model.run()["flows"][0]["all"]


def validate(bench: Bench, smoke: bool) -> dict[str, Any]:
    """The end-to-end figures, the model's for the same setting, and how close they are."""
    scale = SMOKE_VALIDATION if smoke else FULL_VALIDATION
    measured = end_to_end(bench, scale)
    result: dict[str, Any] = {
        "flow": VALIDATION_FLOW,
        "orders": scale.orders,
        "time_scale": scale.time_scale,
        "end_to_end": measured,
    }
    if not measured["ok"] or measured["interval_s"] is None:
        return result
    model = model_alike(scale, measured)
    observed = measured["all"]
    result["model"] = model
    for figure in ("mean_s", "p50_s", "p95_s"):
        if observed[figure] and model[figure]:
            result[f"model_over_end_to_end_{figure.removesuffix('_s')}"] = (
                model[figure] / observed[figure]
            )
    return result
