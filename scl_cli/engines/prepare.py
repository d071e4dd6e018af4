"""Engine of `scl prepare`: turn a data set into shards + manifest.json under OUT/NAME/.

Engines never print: progress goes to an optional `progress(stage, done, total)` callback.
`shapes` is generated here; the paper's data sets (`preparers()`) are read from their official
downloads by `data/sources/` and written by `data/pipeline.py`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scl_cli import __version__
from scl_cli.data import pipeline
from scl_cli.data.download import FetchSettings
from scl_cli.data.images import DEFAULT_MAX_PIXELS, DEFAULT_SIZE, ImageSettings
from scl_cli.data.shapes import generate_image, generate_pair, make_statement, objects_from_json
from scl_cli.data.shapes_clips import CLIP_FRAMES, generate_clip
from scl_cli.data.shards import MANIFEST, ShardWriter, read_manifest, write_manifest
from scl_cli.data.sources import reader, reader_names
from scl_cli.data.sources.base import SourceRequest
from scl_cli.data.tokenizer import train_bpe_tokenizer
from scl_cli.data.writer import WriteSettings
from scl_cli.errors import DataError, UsageError
from scl_cli.io import remote
from scl_cli.io.atomic import swap_in

ProgressFn = Callable[[str, int, int], None]
SPLIT_SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}
TOKENIZER_VOCAB = 1000
_REPORT_EVERY = 100  # samples between progress calls


@dataclass
class PrepareSummary:
    """What `prepare` did: samples per split, per task group (e.g. nlvr2) and the time it took;
    inputs read, samples written, skips by reason (`skipped_by_what`: per "sample", "caption",
    "question", ... and reason), images encoded per second and warnings."""

    name: str
    path: Path
    splits: dict[str, int]
    tasks: dict[str, dict[str, int]]
    seconds: float
    read: int = 0
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_by_what: dict[str, dict[str, int]] = field(default_factory=dict)
    images_per_s: float = 0.0
    resumed_shards: int = 0
    warnings: list[str] = field(default_factory=list)
    problem: str | None = None  # a run that wrote nothing: why, in one line (the CLI exits 2 with it)
    location: str | None = None  # --out URL: where the data set was uploaded (`path` is the staging copy)
    uploaded: tuple[int, int] = (0, 0)  # files sent, files already there


def split_sizes(images: int) -> dict[str, int]:
    """Images per split: 10% val, 10% test (at least one each), the rest train."""
    held_out = max(1, round(images * SPLIT_SHARES["val"]))
    return {"train": images - 2 * held_out, "val": held_out, "test": held_out}


def _dumps(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"))


def _reporting(progress: ProgressFn | None, stage: str, total: int, items: Iterable) -> Iterator:
    """Pass `items` through, calling `progress` at the start, every few items and at the end."""
    if progress:
        progress(stage, 0, total)
    done = 0
    for item in items:
        yield item
        done += 1
        if progress and (done % _REPORT_EVERY == 0 or done == total):
            progress(stage, done, total)


@contextmanager
def _mapper(workers: int) -> Iterator[Callable]:
    """An ordered `map` over `workers` processes (or in this process for one worker)."""
    if workers <= 1:
        yield map
        return
    with multiprocessing.Pool(workers) as pool:
        yield pool.imap


def _existing_target(target: Path) -> None:
    """Refuse to replace a folder that is not an earlier shapes data set."""
    if not target.exists():
        return
    if target.is_dir() and not any(target.iterdir()):
        return
    try:
        if read_manifest(target).get("name") == "shapes":
            return
    except DataError:  # no readable manifest: not ours
        pass
    raise UsageError(f"{target}: exists and is not a shapes data set — remove it or choose another --out")


@dataclass(frozen=True)
class _ShardTask:
    split: str
    split_size: int
    shard: int


def _render_shard(
    work: Path, seed: int, image_size: int, shard_size: int, task: _ShardTask
) -> tuple[dict, list[tuple[bytes, dict]]]:
    """Render and write one image shard (in a worker process); returns its manifest entry and its
    (jpeg, record) samples."""
    samples = []
    first = task.shard * shard_size
    with ShardWriter(work / task.split, shard_size, relative_to=work, first_shard=task.shard) as writer:
        for index in range(first, min(task.split_size, first + shard_size)):
            jpeg, record = generate_image(seed, task.split, index, image_size)
            writer.write({"__key__": record["id"], "jpg": jpeg, "json": _dumps(record)})
            samples.append((jpeg, record))
    return writer.shards[0], samples


def _render_clip_shard(
    work: Path, seed: int, size: int, shard_size: int, task: _ShardTask
) -> tuple[dict, list[str]]:
    """Render and write one shard of moving-shape clips (in a worker); returns its manifest entry
    and its captions."""
    texts: list[str] = []
    first = task.shard * shard_size
    with ShardWriter(
        work / "clips" / task.split, shard_size, relative_to=work, first_shard=task.shard
    ) as writer:
        for index in range(first, min(task.split_size, first + shard_size)):
            mp4, record = generate_clip(seed, task.split, index, size)
            writer.write({"__key__": record["id"], "mp4": mp4, "json": _dumps(record)})
            texts.extend(record["captions"])
    return writer.shards[0], texts


def _clip_shards(
    work: Path, sizes: dict[str, int], seed: int, size: int, shard_size: int, mapper: Callable,
    progress: ProgressFn | None,
) -> tuple[dict[str, dict], list[str]]:  # fmt: skip
    """Every split of the clips group: manifest entries and the train captions (for the tokenizer)."""
    tasks = [_ShardTask(split, n, k) for split, n in sizes.items() if n
             for k in range(-(-n // shard_size))]  # fmt: skip
    entries: dict[str, dict] = {split: {"samples": 0, "shards": []} for split, n in sizes.items() if n}
    texts: list[str] = []
    for task, (shard, captions) in zip(
        tasks, mapper(functools.partial(_render_clip_shard, work, seed, size, shard_size), tasks), strict=True
    ):
        entry = entries[task.split]
        entry["shards"].append(shard)
        entry["samples"] += shard["samples"]
        if progress:
            progress(f"clips/{task.split}", entry["samples"], task.split_size)
        if task.split == "train":
            texts.extend(captions)
    return entries, texts


def _image_shards(
    work: Path, sizes: dict[str, int], seed: int, image_size: int, shard_size: int, mapper: Callable,
    progress: ProgressFn | None,
) -> Iterator[tuple[str, list[dict], list[tuple[bytes, dict]]]]:  # fmt: skip
    """Render every split, one task per shard over all splits so workers stay busy; yields each
    split (shard list, every (jpeg, record)) as soon as it is complete."""
    tasks = [_ShardTask(split, n, k) for split, n in sizes.items() for k in range(-(-n // shard_size))]
    results = mapper(functools.partial(_render_shard, work, seed, image_size, shard_size), tasks)
    shards: list[dict] = []
    samples: list[tuple[bytes, dict]] = []
    for split, n in sizes.items():
        if progress:
            progress(split, 0, n)
    for task, (shard, shard_samples) in zip(tasks, results, strict=True):
        shards.append(shard)
        samples.extend(shard_samples)
        if progress:
            progress(task.split, len(samples), task.split_size)
        if len(samples) == task.split_size:
            yield task.split, shards, samples
            shards, samples = [], []


def _write_pairs(
    work: Path, split: str, images: list[tuple[bytes, dict]], seed: int, shard_size: int,
    progress: ProgressFn | None,
) -> tuple[int, list[dict], list[str]]:  # fmt: skip
    """NLVR2-style pairs of the split's images; returns the count, shard list and statements."""
    count = max(1, len(images) // 2)
    statements = []
    with ShardWriter(work / "nlvr2" / split, shard_size, relative_to=work) as writer:
        for index in _reporting(progress, f"nlvr2/{split}", count, range(count)):
            first, second, label, rng = generate_pair(seed, split, index, len(images))
            (jpeg0, rec0), (jpeg1, rec1) = images[first], images[second]
            statement, kind = make_statement(objects_from_json(rec0), objects_from_json(rec1), label, rng)
            key = f"{split}-pair-{index:06d}"
            record = {"id": key, "statement": statement, "label": label, "type": kind,
                      "images": [rec0["id"], rec1["id"]]}  # fmt: skip
            writer.write({"__key__": key, "img0.jpg": jpeg0, "img1.jpg": jpeg1, "json": _dumps(record)})
            statements.append(statement)
    return count, writer.shards, statements


def _texts(records: Iterable[dict]) -> Iterator[str]:
    for record in records:
        yield from record["captions"]
        for qa in record["vqa"]:
            yield qa["question"]
            yield qa["answer"]


def prepare_shapes(
    out_root: Path,
    images: int = 10000,
    seed: int = 0,
    image_size: int = 128,
    shard_size: int = 1000,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    clips: int | None = None,
    clip_size: int = 64,
) -> Path:
    """Generate the synthetic shapes corpus into `out_root/shapes/` and return that folder.

    Writes `{train,val,test}/NNNNNN.tar` (image + captions/objects/VQA per sample),
    `nlvr2/{train,val,test}/NNNNNN.tar` (image pairs + statement + label), `tokenizer.json`
    (byte-level BPE trained on the train texts), `clips/{train,val,test}/NNNNNN.tar` (`clips`
    MP4 clips of `clip_size` px of a moving shape, with captions that need the motion and their
    opposite-direction foils; default: a fifth of `images`, none below 10; 0 = none) and `manifest.json`. The same arguments give
    byte-identical files whatever `workers` is. The folder is built aside and swapped in at the end.
    """
    if images < 10:
        raise UsageError(f"--images {images}: need at least 10 (one each for val and test)")
    if image_size < 32:
        raise UsageError(
            f"image_size {image_size}: need at least 32 pixels for the shapes to be recognisable"
        )
    if shard_size < 1:
        raise UsageError(f"shard_size {shard_size}: need at least 1 sample per shard")
    if clips is None:
        clips = images // 5 if images // 5 >= 10 else 0
    if clips and clips < 10:
        raise UsageError(f"--clips {clips}: need 0 or at least 10 (one each for val and test)")
    if clip_size < 32:
        raise UsageError(f"clip_size {clip_size}: need at least 32 pixels")
    out_root = Path(out_root)
    target, work = out_root / "shapes", out_root / ".shapes.partial"
    _existing_target(target)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    manifest: dict[str, Any] = {
        "name": "shapes",
        "version": 1,
        "seed": seed,
        "image_size": image_size,
        "generator": f"scl_cli {__version__}",
        "source": "synthetic: `scl prepare shapes`",
        "splits": {},
        "nlvr2": {},
        "tokenizer": "tokenizer.json",
        "skipped": [],
    }
    texts: list[str] = []
    n_workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    with _mapper(n_workers) as mapper:
        for split, shards, samples in _image_shards(work, split_sizes(images), seed, image_size, shard_size,
                                                    mapper, progress):  # fmt: skip
            manifest["splits"][split] = {"samples": len(samples), "shards": shards}
            n_pairs, pair_shards, statements = _write_pairs(work, split, samples, seed, shard_size, progress)
            manifest["nlvr2"][split] = {"samples": n_pairs, "shards": pair_shards}
            if split == "train":
                texts = [*_texts(record for _, record in samples), *statements]
        if clips:
            manifest["clips"], clip_texts = _clip_shards(work, split_sizes(clips), seed, clip_size, shard_size,
                                                         mapper, progress)  # fmt: skip
            manifest["media"] = {"clips": "video"}
            manifest["clip_frames"] = CLIP_FRAMES
            texts += clip_texts
    if progress:
        progress("tokenizer", 0, 1)
    train_bpe_tokenizer(texts, TOKENIZER_VOCAB).save(work / "tokenizer.json")
    if progress:
        progress("tokenizer", 1, 1)
    write_manifest(work, manifest)
    swap_in(work, target)
    return target


def prepare_dataset(
    name: str,
    out_root: Path,
    source: list[Path] | None = None,
    webdataset: list[Path] | None = None,
    split: list[str] | None = None,
    workers: int | None = None,
    image_size: int = DEFAULT_SIZE,
    shard_size: int = 1000,
    limit: int | None = None,
    threads: int = 32,
    timeout: float = 10.0,
    retries: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: ProgressFn | None = None,
) -> Path:
    """Prepare one of the paper's data sets (`name` a reader of `data.sources`) from its official files into
    `out_root/name/`; returns that folder.

    `source`: the official download (see each reader in `data/sources/`); `webdataset`: an
    img2dataset download instead (cc3m, sbu); `split`: splits to write (default: all present);
    `image_size`: shorter side of the stored JPEGs (0 keeps the original); `limit`: at most this
    many inputs per split; `threads`, `timeout`, `retries`: URL downloads per worker. A re-run with
    the same arguments keeps every finished shard and redoes only the rest.
    """
    if webdataset and name not in ("cc3m", "sbu"):
        raise UsageError(f"prepare {name}: --webdataset is for the URL data sets cc3m and sbu")
    checks = {"image_size": (image_size, 0), "shard_size": (shard_size, 1), "limit": (limit or 1, 1),
              "threads": (threads, 1), "retries": (retries, 0), "max_pixels": (max_pixels, 1)}  # fmt: skip
    for option, (value, least) in checks.items():
        if value < least:
            raise UsageError(f"prepare {name}: {option} {value}: need at least {least}")
    if timeout <= 0:
        raise UsageError(f"prepare {name}: timeout {timeout}: need a positive number of seconds")
    request = SourceRequest(
        tuple(Path(p) for p in source or ()), tuple(Path(p) for p in webdataset or ()),
        tuple(dict.fromkeys(split)) if split else None, progress,
    )  # fmt: skip
    data = reader(name)(request)
    settings = WriteSettings(ImageSettings(size=image_size, max_pixels=max_pixels), shard_size)
    fetch = FetchSettings(timeout=timeout, retries=retries)
    n_workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    described = [str(Path(p).resolve()) for p in (*request.sources, *request.webdataset)]
    return pipeline.run(name, out_root, data, settings, fetch, n_workers, threads, limit, described, progress)


def preparers() -> dict[str, Callable[..., Path]]:
    """`shapes` and every data set with a reader."""
    return {
        "shapes": prepare_shapes,
        **{name: functools.partial(prepare_dataset, name) for name in reader_names()},
    }


def staging_folder(out: str) -> Path:
    """Where `--out URL` is prepared before the upload when no `--staging` is given: a folder per
    URL under the user's cache (`$XDG_CACHE_HOME/scl/staging/`)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "scl" / "staging" / hashlib.sha256(out.rstrip("/").encode("utf-8")).hexdigest()[:16]


def prepare(name: str, out: Path | str, staging: Path | None = None, **options: Any) -> PrepareSummary:
    """Prepare data set `name` into `out/name/`; `options` are the preparer's keyword arguments
    (e.g. images, seed, workers, progress). `UsageError` for an unknown name or option.

    `out` may be a URL (`s3://`, `gs://`, any fsspec protocol that writes): the data set is
    prepared in a local staging folder (`staging`, default `staging_folder(out)`; kept, so that a
    re-run resumes shard by shard there), then uploaded file by file, skipping what the URL already
    holds at the same size, `manifest.json` last."""
    if remote.is_url(out):
        url = str(out)
        local = Path(staging) if staging is not None else staging_folder(url)
        summary = prepare(name, local, **options)
        if summary.problem is None:
            summary.location = str(remote.join(url, name))
            summary.uploaded = remote.upload_tree(summary.path, summary.location, last=(MANIFEST,))
        return summary
    out = Path(out)
    known = preparers()
    if name not in known:
        raise UsageError(f"unknown data set '{name}' (known: {', '.join(known)})")
    preparer = known[name]
    accepted = set(inspect.signature(preparer).parameters) - {"out_root"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UsageError(
            f"prepare {name}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(accepted))})"
        )
    pipeline.check_out_root(Path(out))
    started = time.perf_counter()
    path = preparer(Path(out), **options)
    seconds = time.perf_counter() - started
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    counts = {
        group: {split: entry["samples"] for split, entry in entries.items()}
        for group, entries in manifest.items()
        if isinstance(entries, dict)
        and entries
        and all(isinstance(e, dict) and "shards" in e for e in entries.values())
    }
    splits = counts.pop("splits", {})
    written = manifest.get("written", sum(n for group in (splits, *counts.values()) for n in group.values()))
    run = manifest.get("run", {})
    images = run.get("images_encoded", sum(splits.values()))
    return PrepareSummary(
        name, path, splits, counts, seconds,
        read=manifest.get("read", written), written=written, skipped=manifest.get("skipped_counts", {}),
        skipped_by_what=manifest.get("skipped_by_what", {}),
        images_per_s=images / seconds if seconds > 0 else 0.0, resumed_shards=run.get("resumed_shards", 0),
        warnings=list(manifest.get("warnings", [])),
        problem=None if written else pipeline.nothing_written(path, manifest.get("read", written),
                                                              manifest.get("skipped_by_what", {}).get("sample", {})),
    )  # fmt: skip
