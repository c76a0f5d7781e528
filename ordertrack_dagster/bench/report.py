"""The benchmark's outputs, all from one set of figures (`figures.report`): bench.json (every
figure), BENCH.md (the BENCH.md.j2 template filled in) and the growth plot beside it."""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from ordertrack_dagster.bench.figures import Report, minutes, report
from ordertrack_dagster.bench.plot import PLOT_NAME, plot_growth
from ordertrack_dagster.bench.results import Results, scale_as_dict
from ordertrack_dagster.bench.scenarios import BUDGET_ENV, UNLIMITED_BUDGET, budget_env

TEMPLATE = "BENCH.md.j2"


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
    environment.filters |= {"s": seconds, "fmt": format, "minutes": minutes}
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
            "indexes_before_runs": results.indexes_before_runs,
        },
        "targets": [target.as_dict() for target in figures.targets],
        "flows": [run.as_dict() for run in results.flows],
        "growth": [run.as_dict() for run in results.growth],
        "rate_limited": results.limited.as_dict() if results.limited else None,
        "shared_limit": results.shared.as_dict() if results.shared else None,
        "head_of_line": results.head_of_line.as_dict() if results.head_of_line else None,
        "bounded": results.bounded.as_dict() if results.bounded else None,
        "freshness": results.freshness.as_dict() if results.freshness else None,
        "fetch_cpu": asdict(results.fetch_cpu) if results.fetch_cpu else None,
        "kept": asdict(results.kept) if results.kept else None,
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
