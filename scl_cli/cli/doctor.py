"""`scl doctor`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scl_cli.cli.app import SetOpt, app


@app.command()
def doctor(
    recipe: Annotated[
        Path | None,
        typer.Argument(
            help="Recipe whose run to check (data sets, weights, disk, ...); none: this machine only.",
            show_default=False,
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """What a run needs and whether it is here: Python, torch, CUDA/NCCL, GPUs, bf16, decord/PyAV/faiss,
    and with a RECIPE its devices, data sets (manifests, shards vs loader slots), initial weights,
    tokenizer, free disk and write access. Exits 0 only when the recipe can start."""
    from scl_cli.config import load_recipe
    from scl_cli.engines.doctor import doctor as doctor_engine
    from scl_cli.reporting import make_reporter

    loaded = load_recipe(recipe, set_ or []) if recipe is not None else None
    report = doctor_engine(loaded)
    reporter = make_reporter()
    title = f"scl doctor {recipe}" if recipe is not None else "scl doctor"
    reporter.table(title, ["check", "", "found", "what to do"], report.rows())
    failed = [c.name for c in report.checks if c.status == "fail"]
    if failed:
        reporter.info(f"{len(failed)} problem(s) stop this run from starting: {', '.join(failed)}")
        raise typer.Exit(1)
    reporter.info("ready: the run can start" if recipe is not None else "this machine is ready")
