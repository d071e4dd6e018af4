"""Engine of `scl retrieve`: any number of queries (texts, text files of one query per line, image
files) against the index they resolve to, with one model load; with `--images DIR`, that folder is
indexed first (cached beside the checkpoint, new files appended).

Each result's `seconds` says what the command really cost: `startup` (the process up to this
engine: interpreter, imports, command line), `load` (index resolution and the model), then the
`encode` / `search` / `rerank` of the batch the query was answered in, and `total` (process start
to the answers)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import scl_cli
from scl_cli.errors import UsageError
from scl_cli.reporting import NullReporter, Reporter, StageProgress
from scl_cli.search.indexing import build_index
from scl_cli.search.retriever import Hit, RetrievalResult, Retriever, resolve_index
from scl_cli.search.store import default_index_dir, images_dir_name, is_index

TEXT_BATCH = 256  # text queries encoded and searched together


def index_folder(ckpt: Path, folder: Path, reporter: Reporter) -> Path:
    """The cached index of an image folder for a checkpoint, built or extended first."""
    out = default_index_dir(ckpt, images_dir_name(folder))
    with StageProgress(reporter) as progress:
        s = build_index(
            ckpt, out, images=folder, add=is_index(out), progress=progress, info_message=reporter.info
        )
    if s.added:
        reporter.info(f"indexed {s.added} new images of {folder} into {out} ({s.total} in all)")
    for reason, n in s.skipped.items():
        reporter.warn(f"skipped {n} files of {folder}: {reason}")
    return out


def process_seconds() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere since `import scl_cli`)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started)
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - scl_cli.STARTED


def read_queries(path: Path) -> list[str]:
    """The non-empty lines of a `--queries` file, stripped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"--queries {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--queries {path}: unreadable ({err})") from None
    queries = [line.strip() for line in lines if line.strip()]
    if not queries:
        raise UsageError(f"--queries {path}: no query in it (one per line)")
    return queries


def grid_paths(grid: Path, count: int) -> list[Path]:
    """One contact sheet per query: `grid` itself for one, `STEM-1.png`, `STEM-2.png`, ... for several."""
    if count == 1:
        return [grid]
    return [grid.with_name(f"{grid.stem}-{i}{grid.suffix or '.png'}") for i in range(1, count + 1)]


def retrieve(
    query: str | Sequence[str] | None = None,
    image: Path | Sequence[Path] | None = None,
    index: Path | None = None,
    ckpt: Path | None = None,
    images: Path | None = None,
    top_k: int = 10,
    rerank: int = 0,
    grid: Path | None = None,
    device: str = "auto",
    reporter: Reporter | None = None,
    queries_file: Path | None = None,
    startup: float = 0.0,
) -> list[RetrievalResult]:
    """Text queries (`query`, one or several, plus the lines of `queries_file`) and image queries
    (`image` files) against the resolved index, in that order; see the module docstring.
    `startup`: seconds the caller spent before this call (the CLI: `process_seconds()`)."""
    engine_started = time.perf_counter()
    texts = [query] if isinstance(query, str) else list(query or [])
    texts += read_queries(queries_file) if queries_file is not None else []
    files = [image] if isinstance(image, str | Path) else list(image or [])
    if not texts and not files:
        raise UsageError("pass --query TEXT, --queries FILE or --image FILE (each may be repeated)")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise UsageError(f"--query {empty[0] + 1} is empty")
    if files and rerank and not texts:
        raise UsageError("--rerank re-scores (text, image) pairs: use it with --query")
    reporter = reporter or NullReporter()
    where = resolve_index(index, ckpt, images, lambda c, folder: index_folder(c, folder, reporter))
    retriever = Retriever(where, ckpt, device)
    load_s = time.perf_counter() - engine_started
    answered: list[tuple[str, str, list[Hit], dict[str, float], int]] = []
    for a in range(0, len(texts), TEXT_BATCH):
        batch = texts[a : a + TEXT_BATCH]
        for text, hits in zip(batch, retriever.search_texts(batch, top_k, rerank), strict=True):
            answered.append((text, "text->image", hits, dict(retriever.timings), rerank))
    for file in files:
        hits = retriever.search_image(Path(file), top_k)
        answered.append((str(file), "image->image", hits, dict(retriever.timings), 0))
    total = startup + time.perf_counter() - engine_started
    scorer = retriever.model.scorer
    results = []
    for text, mode, hits, timings, k in answered:
        seconds = {"startup": startup, "load": load_s, **timings, "total": total}
        results.append(RetrievalResult(text, mode, str(where), str(retriever.ckpt.path), scorer if k else "itc", k,
                                       hits, {name: round(v, 4) for name, v in seconds.items()}))  # fmt: skip
    if grid is not None:
        for result, out in zip(results, grid_paths(Path(grid), len(results)), strict=True):
            retriever.write_grid(result.hits, out, f"{result.mode}: {result.query}")
    return results
