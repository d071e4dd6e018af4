"""Engine of `scl index`: embed an image collection into a faiss index (see `search.indexing`).
Interrupted? The same command continues from the finished parts."""

from __future__ import annotations

from pathlib import Path

from scl_cli.reporting import NullReporter, Reporter, StageProgress
from scl_cli.search.indexing import DEFAULT_FRAMES, IndexSummary, build_index


def index(
    ckpt: Path,
    out: Path | None = None,
    images: Path | None = None,
    data: Path | None = None,
    split: str = "test",
    kind: str = "auto",
    add: bool = False,
    batch_size: int = 32,
    frames: int = DEFAULT_FRAMES,
    reporter: Reporter | None = None,
) -> IndexSummary:
    """Build (or with `add`, extend) the index of `images` or `data`/`split` under `out`."""
    reporter = reporter or NullReporter()
    with StageProgress(reporter) as progress:
        return build_index(ckpt, out, images, data, split, kind, add, batch_size, frames, progress=progress,
                           info_message=reporter.info)  # fmt: skip
