"""`scl index`, `scl retrieve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scl_cli.cli.app import PlainOpt, app


@app.command("index")
def index_(
    ckpt: Annotated[
        Path,
        typer.Option(
            "--ckpt", help="Checkpoint dir, run dir (newest checkpoint) or a published SCL .ckpt file."
        ),
    ],
    images: Annotated[
        Path | None,
        typer.Option(
            "--images", help="Folder of images (jpg/png/webp/gif) and videos, searched recursively."
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="A prepared data set folder (with manifest.json) instead.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="--data: the split to index.")] = "test",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Index folder (default: CKPT/indexes/NAME, found by `scl retrieve --ckpt`)."
        ),
    ] = None,
    kind: Annotated[
        str, typer.Option("--kind", help="auto (exact below 50k vectors, else ivf) | flat | ivf | hnsw.")
    ] = "auto",
    add: Annotated[
        bool,
        typer.Option("--add", help="Append new images to an existing index (old ones are not re-embedded)."),
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per encoder batch.")] = 32,
    frames: Annotated[
        int, typer.Option("--frames", min=1, help="Frames per video (its feature: the mean over frames).")
    ] = 4,
    plain: PlainOpt = False,
) -> None:
    """Embed every image with the checkpoint's ITC projection into a faiss index (+ metadata and the
    checkpoint's fingerprint). Interrupted? Run the same command again: finished parts are kept."""
    from scl_cli.engines.index import index as index_engine
    from scl_cli.reporting import make_reporter

    reporter = make_reporter(force_plain=plain)
    try:
        s = index_engine(ckpt, out, images, data, split, kind, add, batch_size, frames, reporter)
    except KeyboardInterrupt:
        reporter.warn("interrupted: embedded parts are kept; run the same command again to resume")
        raise
    rows = [["index", str(s.path)], ["kind", s.kind + "".join(f" {k}={v}" for k, v in s.params.items())],
            ["vectors", s.total], ["added", s.added]]  # fmt: skip
    rows += [[f"skipped: {reason}", n] for reason, n in s.skipped.items()]
    rows += [["resumed parts", s.resumed_parts]] if s.resumed_parts else []
    rows += [["checkpoint fingerprint", s.fingerprint[:12]], ["time (s)", round(s.seconds, 1)],
             ["images/s", round(s.images_per_s, 1)]]  # fmt: skip
    reporter.table("scl index", ["", "value"], rows)


@app.command()
def retrieve(
    query: Annotated[
        list[str] | None, typer.Option("--query", help="Text to search images for (repeatable).")
    ] = None,
    queries: Annotated[
        Path | None,
        typer.Option("--queries", help="A text file of queries, one per line (one model load for all)."),
    ] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option("--image", help="Image (or video) file: find similar images (repeatable)."),
    ] = None,
    index: Annotated[Path | None, typer.Option("--index", help="Index folder from `scl index`.")] = None,
    ckpt: Annotated[
        Path | None,
        typer.Option("--ckpt", help="Checkpoint (default: the index's); alone, uses its newest index."),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option("--images", help="Search this folder: indexes it first (cached, new files appended)."),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Hits to show per query.")] = 10,
    rerank: Annotated[
        int,
        typer.Option(
            "--rerank",
            min=0,
            help="Re-score the top K with the fusion score (rank head or ITM); 0 = ITC only.",
        ),
    ] = 0,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the hits as JSON (one object; a list of them for several queries)."
        ),
    ] = False,
    grid: Annotated[
        Path | None,
        typer.Option(
            "--grid", help="Also write a contact sheet PNG of the hits (several queries: OUT-1.png, ...)."
        ),
    ] = None,
    plain: PlainOpt = False,
) -> None:
    """Search an index by text (--query, --queries) or by image (--image): stage 1 ITC from the
    index, stage 2 (--rerank K) the fusion score of the top K. Every query of one call shares one
    model load."""
    import json as _json

    from scl_cli.engines.retrieve import grid_paths, process_seconds
    from scl_cli.engines.retrieve import retrieve as retrieve_engine
    from scl_cli.reporting import make_reporter

    startup = process_seconds()
    reporter = make_reporter(force_plain=plain)
    results = retrieve_engine(query, image, index, ckpt, images, top_k, rerank, grid, reporter=reporter,
                              queries_file=queries, startup=startup)  # fmt: skip
    if json_out:
        payload = results[0].to_json() if len(results) == 1 else [r.to_json() for r in results]
        typer.echo(_json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        for result in results:
            rows = [[h.rank, f"{h.score:.4f}" + (" *" if h.stage == "rerank" else ""), h.label + (" (missing)" if h.missing else ""),
                     h.captions[0] if h.captions else ""] for h in result.hits]  # fmt: skip
            scorer = "" if result.scorer == "itc" else f"; * = {result.scorer} of the top {result.rerank}"
            reporter.table(f"{result.mode}: {result.query!r} ({result.index}; ITC cosine{scorer}; "
                           f"search {1000 * result.seconds['search']:.1f} ms, re-rank {1000 * result.seconds['rerank']:.0f} ms)",
                           ["rank", "score", "path", "caption"], rows)  # fmt: skip
        if len(results) > 1:
            s = results[0].seconds
            reporter.info(f"{len(results)} queries in {s['total']:.1f} s (start-up {s['startup']:.1f} s, "
                          f"model load {s['load']:.1f} s)")  # fmt: skip
    missing = [h for r in results for h in r.missing]
    if missing:
        hits = sum(len(r.hits) for r in results)
        reporter.warn(f"{len(missing)} of {hits} hits are missing on disk (first: {missing[0].label}) — "
                      "rebuild the index (scl index) if the collection moved")  # fmt: skip
    if grid is not None:
        reporter.info("contact sheet: " + ", ".join(str(p) for p in grid_paths(grid, len(results))))
