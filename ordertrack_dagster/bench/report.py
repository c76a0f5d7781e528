"""The benchmark's outputs, all from one set of figures (`figures.report`): bench.json (every
figure), BENCH.md (the BENCH.md.j2 template filled in) and the growth plot beside it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from ordertrack_dagster.bench.figures import (
    RSS_TARGET_MIB,
    Report,
    client_fetch_cpu,
    due,
    per_1000,
    report,
    simulator_cpu,
    tracking_round_trips,
)
from ordertrack_dagster.bench.measure import DAGSTER, RunFigures
from ordertrack_dagster.bench.results import Results, scale_as_dict
from ordertrack_dagster.bench.scenarios import BUDGET_ENV, UNLIMITED_BUDGET, budget_env

TEMPLATE = "BENCH.md.j2"
PLOT_NAME = "bench_growth.png"


def seconds(value: float) -> str:
    """Seconds as the tables show them: three significant figures or so."""
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Markdown, not HTML
    )
    environment.filters |= {"s": seconds, "fmt": format}
    source = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    return environment.from_string(source)


def render_markdown(figures: Report, plot: str | None) -> str:
    return _template().render(
        r=figures, plot=plot, budget_env=BUDGET_ENV, unlimited_budget=UNLIMITED_BUDGET
    )


def to_json(figures: Report) -> dict[str, Any]:
    results = figures.results
    return {
        "generated_at": results.generated_at,
        "mode": results.mode,
        "machine": results.machine,
        "load_average_before": results.load_before,
        "load_average_after": results.load_after,
        "others_cpu_share": figures.others_share,
        "seconds": results.seconds,
        "settings": {
            "latency_mean_ms": results.latency_mean_ms,
            "latency_p99_ms": results.latency_p99_ms,
            "scale": scale_as_dict(results.scale),
            "unlimited_client_budget": budget_env(UNLIMITED_BUDGET),
        },
        "targets": [target.as_dict() for target in figures.targets],
        "flows": [run.as_dict() for run in results.flows],
        "growth": [run.as_dict() for run in results.growth],
        "rate_limited": results.limited.as_dict() if results.limited else None,
    }


def write_report(results: Results, out: Path) -> list[Path]:
    """BENCH.md, bench.json and the plot (when there are growth runs) in `out`; their paths."""
    figures = report(results)
    written = []
    if plot_growth(results.growth, out / PLOT_NAME):
        written.append(out / PLOT_NAME)
    (out / "bench.json").write_text(json.dumps(to_json(figures), indent=1, default=str) + "\n")
    (out / "BENCH.md").write_text(render_markdown(figures, PLOT_NAME if written else None))
    return [out / "BENCH.md", out / "bench.json", *written]


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
