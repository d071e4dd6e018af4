"""`scl align`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scl_cli.cli.app import PlainOpt, app


@app.command()
def align(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint dir, run dir or a published SCL .ckpt file.")],
    data: Annotated[Path, typer.Option("--data", help="An ALIGN-BENCH folder (images/N.jpg + pkls/N.pkl).")],
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Score only the first N images.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="JSON report (default: align.json).")] = None,
    plain: PlainOpt = False,
) -> None:
    """ALIGN-BENCH scores as the paper's align_global.py / align_local.py compute them: the share of
    the text-to-image attention inside the annotated boxes and pixel masks, globally (the text
    class token) and per annotated phrase, with the uniform-attention baseline."""
    from scl_cli.engines.align import align as align_engine
    from scl_cli.reporting import make_reporter

    reporter = make_reporter(force_plain=plain)
    report = align_engine(ckpt, data, limit, reporter=reporter)
    reporter.table(f"ALIGN-BENCH on {data} ({report.images} images, {report.seconds:.1f} s)",
                   ["score", "value (%)", "uniform attention (%)"], report.rows())  # fmt: skip
    path = out or Path("align.json")
    report.write_json(path)
    reporter.info(f"report: {path}")
