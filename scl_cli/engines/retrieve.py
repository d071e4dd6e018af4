"""Engine of `scl retrieve`: one query (text or image) against the index it resolves to; with
`--images DIR`, that folder is indexed first (cached beside the checkpoint, new files appended)."""

from __future__ import annotations

import time
from pathlib import Path

from scl_cli.errors import UsageError
from scl_cli.model.scoring import fusion_scorer_name
from scl_cli.reporting import NullReporter, Reporter, StageProgress
from scl_cli.search.indexing import build_index
from scl_cli.search.retriever import RetrievalResult, Retriever, resolve_index
from scl_cli.search.store import default_index_dir, images_dir_name, is_index


def index_folder(ckpt: Path, folder: Path, reporter: Reporter) -> Path:
    """The cached index of an image folder for a checkpoint, built or extended first."""
    out = default_index_dir(ckpt, images_dir_name(folder))
    with StageProgress(reporter) as progress:
        s = build_index(ckpt, out, images=folder, add=is_index(out), progress=progress, info_message=reporter.info)
    if s.added:
        reporter.info(f"indexed {s.added} new images of {folder} into {out} ({s.total} in all)")
    for reason, n in s.skipped.items():
        reporter.warn(f"skipped {n} files of {folder}: {reason}")
    return out


def retrieve(
    query: str | None = None,
    image: Path | None = None,
    index: Path | None = None,
    ckpt: Path | None = None,
    images: Path | None = None,
    top_k: int = 10,
    rerank: int = 0,
    grid: Path | None = None,
    device: str = "auto",
    reporter: Reporter | None = None,
) -> RetrievalResult:
    """One query (text `query` or image file `image`) against the resolved index; see the module docstring."""
    if (query is None) == (image is None):
        raise UsageError("pass exactly one of --query TEXT or --image FILE")
    if image is not None and rerank:
        raise UsageError("--rerank re-scores (text, image) pairs: use it with --query")
    started = time.perf_counter()
    reporter = reporter or NullReporter()
    where = resolve_index(index, ckpt, images, lambda c, folder: index_folder(c, folder, reporter))
    retriever = Retriever(where, ckpt, device)
    loaded_s = time.perf_counter() - started
    if query is not None:
        hits = retriever.search_texts([query], top_k, rerank)[0]
        mode = "text->image"
    else:
        hits = retriever.search_image(Path(str(image)), top_k)
        mode = "image->image"
    scorer = fusion_scorer_name(retriever.model) if rerank else "itc"
    seconds = {"load": round(loaded_s, 4), **{k: round(v, 4) for k, v in retriever.timings.items()}}
    result = RetrievalResult(query if query is not None else str(image), mode, str(where), str(retriever.ckpt.path),
                             scorer, rerank, hits, seconds)  # fmt: skip
    if grid is not None:
        retriever.write_grid(hits, grid, f"{mode}: {result.query}")
    return result
