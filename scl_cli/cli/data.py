"""`scl prepare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scl_cli.cli.app import PlainOpt, app


@app.command()
def prepare(
    name: Annotated[
        str,
        typer.Argument(
            help="Data set: shapes (synthetic, offline), coco, vg, sbu, cc3m (pre-training), "
            "f30k, vqav2, nlvr2 (fine-tuning; coco too), webvid (video pre-training), msrvtt, lsmdc "
            "(video retrieval)."
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            help="Root folder or URL (s3://, gs://, any fsspec protocol that writes); the data "
            "set is written to OUT/NAME/ (for a URL: prepared in --staging, then uploaded).",
        ),
    ] = "data",
    staging: Annotated[
        Path | None,
        typer.Option(
            "--staging",
            help="With --out URL: the local folder it is prepared in first (kept, so that a "
            "re-run resumes; default: under ~/.cache/scl/staging/).",
        ),
    ] = None,
    source: Annotated[
        list[Path] | None,
        typer.Option("--source", help="The official download: a folder or file (repeatable; see README)."),
    ] = None,
    webdataset: Annotated[
        list[Path] | None,
        typer.Option("--webdataset", help="cc3m/sbu: an existing img2dataset WebDataset download instead."),
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option("--split", help="Split to write (repeatable; default: all present).")
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", min=0, help="Shorter side of stored images (0: as is; default 384)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most N inputs per split: a quick look.")
    ] = None,
    shard_size: Annotated[int | None, typer.Option("--shard-size", min=1, help="Samples per shard.")] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="Concurrent downloads per worker (default 32).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.01, help="Download timeout in seconds (default 10).")
    ] = None,
    retries: Annotated[
        int | None, typer.Option("--retries", min=0, help="Download retries, with back-off (default 2).")
    ] = None,
    images: Annotated[
        int | None, typer.Option("--images", min=10, help="shapes: number of images in all splits (10000).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="shapes: generator seed (same seed, same bytes).")
    ] = None,
    clips: Annotated[
        int | None,
        typer.Option(
            "--clips",
            min=0,
            help="shapes: clips of a moving shape in all splits (default: a fifth of --images; 0 = none).",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker processes (default: all cores).")
    ] = None,
    plain: PlainOpt = False,
) -> None:
    """Turn a data set into WebDataset shards + manifest.json (+ tokenizer for shapes).

    Unusable inputs are skipped and listed in the manifest; re-running the same command resumes."""
    from scl_cli.engines.prepare import prepare as prepare_engine
    from scl_cli.reporting import StageProgress, make_reporter

    given = {
        "source": source, "webdataset": webdataset, "split": split, "image_size": image_size, "limit": limit,
        "shard_size": shard_size, "threads": threads, "timeout": timeout, "retries": retries,
        "images": images, "seed": seed, "workers": workers, "clips": clips,
    }  # fmt: skip
    options = {key: value for key, value in given.items() if value not in (None, [])}
    from scl_cli.config.location import is_url

    if staging is not None and not is_url(out):
        from scl_cli.errors import UsageError

        raise UsageError("--staging goes with an --out URL (a local --out is written in place)")
    target = out if is_url(out) else Path(out)
    reporter = make_reporter(force_plain=plain)
    try:
        with StageProgress(reporter) as progress:
            summary = prepare_engine(name, target, staging=staging, progress=progress, **options)
    except KeyboardInterrupt:
        if name != "shapes":
            reporter.warn("interrupted: finished shards are kept; run the same command again to resume")
        raise
    rows = [["images", split, n] for split, n in summary.splits.items()]
    rows += [[group, split, n] for group, counts in summary.tasks.items() for split, n in counts.items()]
    where = summary.location or summary.path
    reporter.table(f"{name} -> {where} ({summary.seconds:.1f} s)", ["part", "split", "samples"], rows)
    totals = [["read", summary.read], ["written", summary.written]]
    totals += [[f"skipped {what}: {reason}", n] for what, reasons in summary.skipped_by_what.items()
               for reason, n in reasons.items()]  # fmt: skip
    totals += [["resumed shards", summary.resumed_shards]] if summary.resumed_shards else []
    totals += [["time (s)", round(summary.seconds, 1)], ["images/s", round(summary.images_per_s, 1)]]
    if summary.location:
        totals += [["staged in", str(summary.path)], ["files uploaded", summary.uploaded[0]],
                   ["files already uploaded", summary.uploaded[1]]]  # fmt: skip
    reporter.table(f"{name}: summary", ["", "count"], totals)
    for warning in summary.warnings:
        reporter.warn(warning)
    if summary.problem:
        from scl_cli.errors import DataError

        raise DataError(summary.problem)
