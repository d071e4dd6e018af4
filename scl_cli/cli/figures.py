"""`scl align`, `scl visualize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scl_cli.cli.app import PlainOpt, app


@app.command()
def align(
    ckpt: Annotated[
        Path, typer.Option("--ckpt", help="Checkpoint dir, run dir or a published SCL .ckpt file.")
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data", help="An ALIGN-BENCH folder (images/N.jpg + pkls/N.pkl), or a prepared shapes data set."
        ),
    ],
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Score only the first N images.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="shapes: the split scored.")] = "test",
    out: Annotated[Path | None, typer.Option("--out", help="JSON report (default: align.json).")] = None,
    plain: PlainOpt = False,
) -> None:
    """ALIGN-BENCH scores as the paper's align_global.py / align_local.py compute them: the share of
    the text-to-image attention inside the annotated boxes and pixel masks, globally (the text
    class token) and per annotated phrase, with the uniform-attention baseline. On shapes, each
    object phrase of the caption naming every object, with the object's box and pixel mask."""
    from scl_cli.engines.align import align as align_engine
    from scl_cli.reporting import make_reporter

    reporter = make_reporter(force_plain=plain)
    report = align_engine(ckpt, data, limit, reporter=reporter, split=split)
    reporter.table(f"ALIGN-BENCH on {data} ({report.images} images, {report.seconds:.1f} s)",
                   ["score", "value (%)", "uniform attention (%)"], report.rows())  # fmt: skip
    path = out or Path("align.json")
    report.write_json(path)
    reporter.info(f"report: {path}")


@app.command()
def visualize(
    ckpt: Annotated[
        Path, typer.Option("--ckpt", help="Checkpoint dir, run dir or a published SCL .ckpt file.")
    ],
    image: Annotated[Path, typer.Option("--image", help="An image, or a video (one row per frame).")],
    text: Annotated[str, typer.Option("--text", help="The caption whose attention is drawn.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG or SVG (default: IMAGE-attention.png).")
    ] = None,
    masked: Annotated[
        bool,
        typer.Option(
            "--masked", help="The local-SCL view: replaced patches and how well they are recovered."
        ),
    ] = False,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Frames drawn from a video.")] = 4,
) -> None:
    """The fusion's text-to-image cross-attention over the image, as the paper's scripts draw it
    (last fusion layer, maximum over heads): the text class token's map and one map per word."""
    from scl_cli.engines.visualize import visualize as visualize_engine
    from scl_cli.reporting import make_reporter

    result = visualize_engine(ckpt, image, text, out, masked, frames)
    words = f" ({len(result.words)} words: {' '.join(result.words)})" if result.words else ""
    make_reporter().info(f"wrote {result.path}{words}")
