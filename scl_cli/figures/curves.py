"""Training curves from `RUN/metrics.jsonl`: one panel per metric, several runs overlaid, PNG or
SVG; and a terminal summary (first, last, best, a sparkline) for a shell without pictures."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scl_cli.errors import UsageError

METRICS_FILE = "metrics.jsonl"
# Shown first, in this order, when present; then every other metric except the ones below.
PREFERRED = ("loss", "itc", "itm", "mlm", "scl_global", "scl_local", "vqa", "nlvr2", "rank")
HIDDEN_BY_DEFAULT = ("step_time", "video_batches", "loss_image", "loss_video")
TIMING = ("lr", "samples_per_s", "data_wait", "grad_norm")
SPARK = "▁▂▃▄▅▆▇█"


@dataclass
class RunCurves:
    """A run's logged values: `series[name]` is a list of (step, value), value None when not finite."""

    name: str
    path: Path
    series: dict[str, list[tuple[int, float | None]]] = field(default_factory=dict)


def metrics_file(run: Path) -> Path:
    """RUN (a run folder) or RUN/metrics.jsonl itself."""
    run = Path(run)
    path = run / METRICS_FILE if run.is_dir() else run
    if not path.is_file():
        raise UsageError(f"{run}: no {METRICS_FILE} here (pass a run folder made by scl pretrain/finetune)")
    return path


def read_run(run: Path, name: str | None = None) -> RunCurves:
    """Every numeric field of every line (torn or non-JSON lines are skipped)."""
    path = metrics_file(run)
    curves = RunCurves(name or (path.parent.name if path.name == METRICS_FILE else path.stem), path)
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        for key, value in record.items():
            if key == "step" or not (value is None or isinstance(value, int | float)):
                continue
            number = float(value) if value is not None and math.isfinite(value) else None
            curves.series.setdefault(key, []).append((record["step"], number))
    return curves


def unique_names(runs: Sequence[Path]) -> list[str]:
    """Legend names: the run folder's name, with its parent's when two runs share a name."""
    names = [metrics_file(r).parent.name for r in runs]
    return [
        f"{metrics_file(r).parent.parent.name}/{n}" if names.count(n) > 1 else n
        for r, n in zip(runs, names, strict=True)
    ]


def default_metrics(runs: Iterable[RunCurves]) -> list[str]:
    """Losses first (total, then each objective), then evaluation metrics (`eval/...`), then the
    rest (accuracies, temperatures, lr, throughput, data wait)."""
    present: list[str] = []
    for run in runs:
        present += [k for k in run.series if k not in present]
    losses = [k for k in PREFERRED if k in present]
    evals = sorted(k for k in present if k.startswith("eval/"))
    rest = [k for k in present if k not in losses and k not in evals and k not in HIDDEN_BY_DEFAULT]
    rest.sort(key=lambda k: (k in TIMING, TIMING.index(k) if k in TIMING else 0, k))
    return losses + evals + rest


def smooth(values: Sequence[float | None], weight: float) -> list[float | None]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start; missing
    (non-finite) points stay missing and do not enter the average."""
    if not 0 <= weight < 1:
        raise UsageError(f"--smooth {weight}: expected a weight in [0, 1)")
    out: list[float | None] = []
    last, count = 0.0, 0
    for v in values:
        if v is None:
            out.append(None)
            continue
        last = last * weight + (1 - weight) * v
        count += 1
        out.append(last / (1 - weight**count) if weight > 0 else v)
    return out


def plot_runs(
    runs: Sequence[RunCurves], metrics: Sequence[str], out: Path, smoothing: float = 0.0, columns: int = 3
) -> Path:
    """One panel per metric (x: step, y: value; log scale for the learning rate), every run a line
    with its name in the legend; PNG or SVG by `out`'s suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics:
        raise UsageError("nothing to plot: the runs logged no metric")
    missing = [m for m in metrics if not any(m in r.series for r in runs)]
    if missing:
        known = sorted({k for r in runs for k in r.series})
        raise UsageError(
            f"--metrics: {', '.join(missing)} not logged by these runs (logged: {', '.join(known)})"
        )
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg"):
        raise UsageError(f"--out {out}: expected a .png or .svg file")
    cols = min(columns, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for i, run in enumerate(runs):
            points = run.series.get(metric)
            if not points:
                continue
            steps = [s for s, _ in points]
            values = [v for _, v in points]
            color = f"C{i % 10}"
            if smoothing > 0:
                ax.plot(
                    steps, [float("nan") if v is None else v for v in values], color=color, alpha=0.25, lw=1
                )
            shown = smooth(values, smoothing)
            ax.plot(
                steps, [float("nan") if v is None else v for v in shown], color=color, lw=1.6, label=run.name
            )
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if metric == "lr":
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if len(runs) > 1 or smoothing > 0:
        title = f"smoothing {smoothing:g}" if smoothing > 0 else None
        fig.legend(handles, labels, loc="upper center", ncol=min(len(runs), 4), frameon=False, title=title)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / rows))
    else:
        fig.suptitle(runs[0].name)
        fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def sparkline(values: Sequence[float | None], width: int = 40) -> str:
    """Unicode block sparkline of `values`, resampled to at most `width` characters."""
    finite = [v for v in values if v is not None]
    if not finite:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [values[min(int(i * step), len(values) - 1)] for i in range(width)]
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    return "".join(
        " " if v is None else SPARK[min(int((v - lo) / span * len(SPARK)), len(SPARK) - 1)] for v in values
    )


def summary_rows(
    runs: Sequence[RunCurves], metrics: Sequence[str], smoothing: float = 0.0
) -> list[list[str]]:
    """Per (metric, run): first, last, min, max (of the finite values) and a sparkline."""
    rows = []
    for metric in metrics:
        for run in runs:
            points = run.series.get(metric)
            if not points:
                continue
            values = smooth([v for _, v in points], smoothing)
            finite = [v for v in values if v is not None]
            if not finite:
                rows.append([metric, run.name, "-", "-", "-", "-", ""])
                continue
            rows.append([metric, run.name, f"{finite[0]:.4g}", f"{finite[-1]:.4g}", f"{min(finite):.4g}",
                         f"{max(finite):.4g}", sparkline(values)])  # fmt: skip
    return rows
