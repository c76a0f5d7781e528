"""The growth plot beside BENCH.md: delhivery_b2c's figures against the orders due."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ordertrack_dagster.bench.figures import (
    RSS_TARGET_MIB,
    client_fetch_cpu,
    due,
    per_1000,
    simulator_cpu,
    tracking_round_trips,
)
from ordertrack_dagster.bench.measure import DAGSTER, RunFigures

PLOT_NAME = "bench_growth.png"


def plot_growth(runs: Sequence[RunFigures], path: Path) -> bool:
    """Four panels against orders due: phase times, per-1,000 figures, memory, the fetch."""
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dues = [due(run) for run in runs]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    times = axes[0][0]
    for name, pick in (
        ("whole run", lambda r: r.whole_seconds),
        ("MongoDB write", lambda r: r.phase_seconds["write"]),
        ("side effects", lambda r: r.phase_seconds["effects"]),
        ("Dagster", lambda r: r.phase_seconds[DAGSTER]),
        ("selection", lambda r: r.phase_seconds["selection"]),
        ("fetch", lambda r: r.fetch_seconds),
        ("mapping", lambda r: r.phase_seconds["mapping"]),
    ):
        times.plot(dues, [max(pick(run), 1e-3) for run in runs], marker="o", label=name)
    base = runs[0].whole_seconds
    times.plot(dues, [base * d / dues[0] for d in dues], "k:", label="linear from the first")
    times.set(xscale="log", yscale="log", xlabel="orders due", ylabel="seconds")
    times.set_title("wall time per phase")
    times.legend(fontsize=7)
    per = axes[0][1]
    per.plot(dues, [per_1000(r.cpu_seconds, r) for r in runs], marker="o", label="run CPU s")
    per.plot(
        dues,
        [per_1000(r.mongo.round_trips, r) for r in runs],
        marker="s",
        label="MongoDB round trips, whole run",
    )
    per.plot(
        dues,
        [per_1000(tracking_round_trips(r), r) for r in runs],
        marker="^",
        label="MongoDB round trips, tracking",
    )
    per.set(xscale="log", yscale="log", xlabel="orders due", title="per 1,000 orders selected")
    per.legend(fontsize=7)
    memory = axes[1][0]
    memory.plot(dues, [r.peak_rss_mib for r in runs], marker="o")
    memory.axhline(RSS_TARGET_MIB, color="red", linestyle="--", label="1 GiB")
    memory.set(xscale="log", xlabel="orders due", ylabel="MiB", title="peak RSS of the run")
    memory.set_ylim(bottom=0)
    memory.legend(fontsize=7)
    fetch = axes[1][1]
    fetch.plot(dues, [r.fetch_seconds for r in runs], marker="o", label="fetch")
    fetch.plot(dues, [r.fetch_bound_seconds for r in runs], "k:", label="latency bound")
    fetch.plot(
        dues,
        [client_fetch_cpu(r) for r in runs],
        marker="s",
        label="client CPU in fetch",
    )
    fetch.plot(
        dues,
        [simulator_cpu(r) for r in runs],
        marker="^",
        label="simulator CPU",
    )
    fetch.set(xscale="log", yscale="log", xlabel="orders due", ylabel="seconds", title="fetch")
    fetch.legend(fontsize=7)
    for run, x in zip(runs, dues, strict=True):
        if x > run.orders:
            times.annotate(f"{run.orders:,} selected (cap)", (x, run.whole_seconds), fontsize=7)
    figure.suptitle("delhivery_b2c as orders grow (one scheduled run per size)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
