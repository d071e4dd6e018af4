"""The `scl prepare NAME` pipeline for real data sets: reader -> shard jobs -> workers -> manifest.

The reader's records are cut into shard jobs per split in reading order (so the assignment of
inputs to shards depends only on the inputs and the arguments), finished shards of an earlier run
are kept, the rest go to worker processes (each with download threads for URL sources), and
`manifest.json` is written last: a data set folder with a manifest is complete.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scl_cli import __version__
from scl_cli.data.download import FetchSettings
from scl_cli.data.shards import MANIFEST, write_manifest
from scl_cli.data.sources.base import ProgressFn, Record, Skip, SourceData
from scl_cli.data.writer import STATE_DIR, ShardJob, ShardResult, WriteSettings, finished, write_shard
from scl_cli.errors import UsageError
from scl_cli.io.atomic import atomic_write_json

MANIFEST_SKIPS = 10_000  # skip entries listed in manifest.json; all of them are in skipped.jsonl
SKIPPED_FILE = "skipped.jsonl"
_REPORT_EVERY = 50


@dataclass
class RunStats:
    """Counts of one run, for the manifest and the summary table."""

    read: int = 0
    written: int = 0
    images_done: int = 0  # images encoded by this run (not counting resumed shards)
    resumed_shards: int = 0
    shards: int = 0


def _init_worker(parent: int) -> None:
    """Ctrl-C is the parent's to handle; a worker whose parent was killed (SIGKILL) exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def check_target(target: Path, name: str) -> None:
    """Refuse to write into a folder that is neither empty nor an earlier `prepare NAME` output."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    if (target / STATE_DIR).is_dir():
        return
    try:
        if json.loads((target / MANIFEST).read_text(encoding="utf-8")).get("name") == name:
            return
    except (OSError, ValueError, AttributeError):
        pass
    raise UsageError(f"{target}: exists and is not a '{name}' data set — remove it or choose another --out")


def check_out_root(out_root: Path) -> None:
    """Refuse an `--out` that is, or lies under, something other than a folder, before any
    input is read (`UsageError` naming it)."""
    for path in (out_root, *out_root.parents):
        if path.exists():
            if not path.is_dir():
                what = "--out" if path == out_root else f"a parent of --out {out_root}"
                raise UsageError(f"{path}: is a file, not a folder ({what}); --out is the folder the data "
                                 "set is written under (OUT/NAME/) — choose another --out")  # fmt: skip
            return


_CAUSES = {
    "missing_image": "no image file was found: the image folders are not among --source (it may be "
    "repeated; README, Preparing the paper's data sets, names the folders each reader looks for)",
    "missing_video": "no video file was found: the video folder is not among --source (it may be repeated)",
    "no_captions": "no input has a caption: is the annotation file the right one for this data set?",
    "download_failed": "no download succeeded: check the network, or the img2dataset download's status",
}
_DOWNLOAD = ("http_", "timeout", "connection_error", "truncated", "bad_content_type", "bad_url",
             "too_many_redirects", "missing_url")  # fmt: skip
_IMAGE = ("empty_image", "not_an_image", "decompression_bomb", "truncated_image", "corrupt_image", "too_small",
          "unsupported_mode", "too_large")  # fmt: skip


def nothing_written(root: Path, read: int, skipped_samples: dict[str, int]) -> str:
    """The one-line error for a run that wrote no sample into `root`: how many inputs were read,
    the skip reasons, and their likely cause."""
    if not read:
        return (f"{root}: wrote no sample: the annotation files list no input for the chosen splits "
                "(check --split and that the files are the official ones)")  # fmt: skip
    reasons = ", ".join(
        f"{n} {reason}" for reason, n in sorted(skipped_samples.items(), key=lambda kv: -kv[1])
    )
    top = max(skipped_samples, key=skipped_samples.__getitem__) if skipped_samples else ""
    if top in _CAUSES:
        cause = _CAUSES[top]
    elif top in _IMAGE:
        cause = "no image could be decoded: are the image files complete and really images?"
    elif top.startswith(_DOWNLOAD):
        cause = "no image could be downloaded: check the network (a proxy?) and --timeout / --retries"
    else:
        cause = "see the reasons"
    return (f"{root}: wrote no sample: 0 of {read} inputs written (skipped: {reasons or 'none'}); "
            f"likely cause: {cause}; every skip is listed in {root / SKIPPED_FILE}")  # fmt: skip


def _jobs(records: Any, limit: int | None, shard_size: int, expected: set[str] | None,
          read_skips: list[Skip], stats: RunStats) -> Iterator[ShardJob]:  # fmt: skip
    """Consecutive runs of `shard_size` records per split; at most `limit` records per split
    (reading stops once every `expected` split is full)."""
    buffers: dict[str, list[Record]] = {}
    counts: Counter[str] = Counter()
    next_index: Counter[str] = Counter()
    full: set[str] = set()
    for item in records:
        if isinstance(item, Skip):
            if item.split not in full:
                read_skips.append(item)
                stats.read += item.what == "sample"
            continue
        split = item.split
        if split in full:
            if expected and full >= expected:
                break
            continue
        counts[split] += 1
        stats.read += 1
        buffer = buffers.setdefault(split, [])
        buffer.append(item)
        if len(buffer) == shard_size:
            yield ShardJob(split, next_index[split], buffer)
            next_index[split] += 1
            buffers[split] = []
        if limit is not None and counts[split] >= limit:
            full.add(split)
    for split, buffer in buffers.items():
        if buffer:
            yield ShardJob(split, next_index[split], buffer)


def _run_jobs(root: Path, jobs: Iterator[ShardJob], settings: WriteSettings, fetch: FetchSettings,
              workers: int, threads: int, progress: ProgressFn | None, total: int,
              stats: RunStats) -> list[ShardResult]:  # fmt: skip
    results: list[ShardResult] = []
    done = 0

    def collect(result: ShardResult) -> None:
        nonlocal done
        results.append(result)
        done += result.inputs
        stats.written += result.samples
        stats.shards += 1
        if result.resumed:
            stats.resumed_shards += 1
        else:
            stats.images_done += result.images
        if progress:
            progress("shards", done, total)

    if progress:
        progress("shards", 0, total)
    if workers <= 1:
        for job in jobs:
            collect(finished(root, job, settings) or write_shard(root, job, settings, fetch, threads))
        return results
    outcomes: queue.Queue = queue.Queue()
    pending = 0
    pool = multiprocessing.Pool(workers, initializer=_init_worker, initargs=(os.getpid(),))
    try:
        for job in jobs:
            kept = finished(root, job, settings)
            if kept is not None:
                collect(kept)
                continue
            pool.apply_async(write_shard, (root, job, settings, fetch, threads),
                             callback=outcomes.put, error_callback=outcomes.put)  # fmt: skip
            pending += 1
            while pending >= 2 * workers:  # bounded: the reader never runs far ahead of the workers
                pending -= 1
                collect(_checked(outcomes.get()))
        while pending:
            pending -= 1
            collect(_checked(outcomes.get()))
        pool.close()
    finally:
        pool.terminate()
        pool.join()
    return results


def _checked(outcome: ShardResult | BaseException) -> ShardResult:
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _clean_stale(root: Path, splits: dict[str, list[ShardResult]]) -> None:
    """Remove shards and records of these splits that this run did not produce (an earlier run
    with other arguments), and leftovers of interrupted writes."""
    for split, results in splits.items():
        keep_tars = {Path(r.entry["file"]).name for r in results if r.entry}
        keep_states = {f"{r.index:06d}.json" for r in results}
        for folder, keep in ((root / split, keep_tars), (root / STATE_DIR / split, keep_states)):
            if folder.is_dir():
                for path in folder.iterdir():
                    if path.is_file() and path.name not in keep:
                        path.unlink()


def _by_what(skipped: list[dict[str, str]]) -> dict[str, dict[str, int]]:
    """Skip counts per kind of input ("sample", "caption", "question", ...) and reason."""
    out: dict[str, Counter[str]] = {}
    for s in skipped:
        out.setdefault(s["what"], Counter())[s["reason"]] += 1
    return {
        what: dict(sorted(c.items())) for what, c in sorted(out.items(), key=lambda kv: kv[0] != "sample")
    }


def _write_extras(root: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        atomic_write_json(root / name, content, indent=1)


def run(
    name: str,
    out_root: Path,
    data: SourceData,
    settings: WriteSettings,
    fetch: FetchSettings,
    workers: int,
    threads: int,
    limit: int | None,
    sources: list[str],
    progress: ProgressFn | None,
) -> Path:
    """Write `data` as data set `name` under `out_root/name/`; returns that folder."""
    started = time.perf_counter()
    root = Path(out_root) / name
    check_target(root, name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / STATE_DIR).mkdir(exist_ok=True)
    except OSError as err:
        raise UsageError(
            f"{root}: cannot create the folder ({err.strerror or err}) — choose another --out"
        ) from None
    (root / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the new manifest lands
    stats = RunStats()
    read_skips: list[Skip] = []
    totals = data.totals or {}
    total = sum(min(n, limit) if limit is not None else n for n in totals.values()) if totals else 0
    jobs = _jobs(
        iter(data.records), limit, settings.shard_size, set(data.splits or totals) or None, read_skips, stats
    )
    results = _run_jobs(root, jobs, settings, fetch, workers, threads, progress, total, stats)
    by_split: dict[str, list[ShardResult]] = {}
    for result in sorted(results, key=lambda r: (r.split, r.index)):
        by_split.setdefault(result.split, []).append(result)
    skipped = [s.to_json() for s in read_skips] + [s for r in sorted(results, key=lambda r: (r.split, r.index))
                                                   for s in r.skipped]  # fmt: skip
    counts = Counter(s["reason"] for s in skipped)
    _clean_stale(root, by_split)
    _write_extras(root, data.files)
    with open(root / SKIPPED_FILE, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(s) + "\n" for s in skipped)
    seconds = time.perf_counter() - started
    manifest: dict[str, Any] = {
        "name": name,
        "version": 1,
        "task": data.task,
        "generator": f"scl_cli {__version__}",
        "source": sources,
        "settings": {**settings.to_json(), "limit": limit},
        "splits": {
            split: {"samples": sum(r.samples for r in rs), "shards": [r.entry for r in rs if r.entry]}
            for split, rs in by_split.items()
        },
        **data.info,
        "read": stats.read,
        "written": stats.written,
        "skipped_counts": dict(sorted(counts.items())),
        "skipped_by_what": _by_what(skipped),
        "skipped_samples": sum(1 for s in skipped if s["what"] == "sample"),
        "skipped": skipped[:MANIFEST_SKIPS],
        "skipped_file": SKIPPED_FILE,
        "warnings": data.warnings,
        "run": {
            "seconds": round(seconds, 3),
            "shards": stats.shards,
            "resumed_shards": stats.resumed_shards,
            "images_encoded": stats.images_done,
            "images_per_s": round(stats.images_done / seconds, 2) if seconds > 0 else 0.0,
        },
    }
    write_manifest(root, manifest)
    return root
