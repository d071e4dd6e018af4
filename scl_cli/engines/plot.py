"""Engine of `scl plot`: training curves of one or more runs (PNG/SVG), and their terminal summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scl_cli.errors import UsageError
from scl_cli.figures.curves import default_metrics, plot_runs, read_run, summary_rows, unique_names


@dataclass
class PlotResult:
    path: Path | None  # the picture written (None with --ascii only)
    metrics: list[str]
    rows: list[list[str]]  # the terminal summary: metric, run, first, last, min, max, sparkline


def plot(
    runs: list[Path],
    metrics: list[str] | None = None,
    out: Path | None = None,
    smoothing: float = 0.0,
    picture: bool = True,
) -> PlotResult:
    """Read each run's metrics.jsonl; draw `metrics` (default: every loss, evaluation metric,
    accuracy, lr, throughput) to `out` (default: RUN/curves.png of the first run)."""
    if not runs:
        raise UsageError("pass at least one run folder")
    curves = [read_run(run, name) for run, name in zip(runs, unique_names(runs), strict=True)]
    chosen = list(metrics) if metrics else default_metrics(curves)
    path = None
    if picture:
        path = out or curves[0].path.parent / "curves.png"
        plot_runs(curves, chosen, path, smoothing)
    return PlotResult(path, chosen, summary_rows(curves, chosen, smoothing))
