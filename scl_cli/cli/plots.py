"""`scl plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scl_cli.cli.app import app


@app.command()
def plot(
    runs: Annotated[
        list[Path],
        typer.Argument(help="Run folders (or metrics.jsonl files) to overlay.", show_default=False),
    ],
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics", help="Comma-separated, e.g. loss,itc,eval/ir_r1 (default: all that matter)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG or SVG file (default: RUN/curves.png).")
    ] = None,
    smooth: Annotated[
        float, typer.Option("--smooth", min=0.0, max=0.999, help="EMA weight, as TensorBoard's slider.")
    ] = 0.0,
    ascii_: Annotated[
        bool, typer.Option("--ascii", help="Only the terminal summary with sparklines, no picture.")
    ] = False,
) -> None:
    """Training curves from metrics.jsonl: every objective, lr, throughput, data wait and the
    in-training evaluation; several runs overlaid with their names."""
    from scl_cli.engines.plot import plot as plot_engine
    from scl_cli.reporting import make_reporter

    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    result = plot_engine(runs, names, out, smooth, picture=not ascii_)
    reporter = make_reporter()
    reporter.table("scl plot", ["metric", "run", "first", "last", "min", "max", "curve"], result.rows)
    if result.path is not None:
        reporter.info(f"curves: {result.path}")
