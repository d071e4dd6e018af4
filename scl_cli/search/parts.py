"""The units of work of an index build: parts (a shard, or `part_size` files), what each holds,
and their files under `INDEX/.parts/` (written atomically; the `.npy` is a part's commit point)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scl_cli.data.manifests import load_sources
from scl_cli.data.media import decode_media, list_media_files, load_file, sample_media
from scl_cli.data.shards import iter_tar_samples
from scl_cli.data.task_batches import sample_json
from scl_cli.data.transforms import ImageTransform
from scl_cli.errors import UsageError
from scl_cli.io.atomic import atomic_file, atomic_write_bytes
from scl_cli.search.store import CheckpointId, MetaStore, meta_line


@dataclass
class Part:
    """A unit of work: one shard (`shard`) or a list of files (`files`)."""

    files: list[str] | None = None
    shard: str | None = None
    samples: int = 0

    @property
    def size(self) -> int:
        return len(self.files) if self.files is not None else self.samples

    def describe(self) -> dict[str, Any]:
        return {"files": self.files} if self.files is not None else {"shard": self.shard}


# ----------------------------------------------------------------------------- planning
def data_dir(data: Path) -> Path:
    data = Path(data)
    if not (data / "manifest.json").is_file():
        raise UsageError(
            f"--data {data}: no manifest.json there — pass a data set folder made by `scl prepare`"
        )
    return data


def plan_parts(
    images: Path | None, data: Path | None, split: str, held: set[str], part_size: int
) -> list[Part]:
    """The parts still to embed: files under `images` or shards of `data`/`split`, minus `held`
    (file paths and shard paths the index already has)."""
    if images is not None:
        if not Path(images).is_dir():
            raise UsageError(f"--images {images}: not a folder")
        files = [str(p) for p in list_media_files(Path(images)) if str(p) not in held]
        return [Part(files=files[a : a + part_size]) for a in range(0, len(files), part_size)]
    assert data is not None
    folder = data_dir(data)
    shards = load_sources(folder.parent, [folder.name], split)[0].shards
    return [
        Part(shard=str(s.path.resolve()), samples=s.samples)
        for s in shards
        if str(s.path.resolve()) not in held
    ]


def held_sources(index_dir: Path) -> set[str]:
    held: set[str] = set()
    for record in MetaStore(index_dir).iter_all():
        held.add(record["path"] if "path" in record else record["shard"])
    return held


def items_of(part: Part) -> Iterator[tuple[dict[str, Any], Callable[[ImageTransform, int], torch.Tensor]]]:
    """(metadata, load(transform, frames) -> uint8 [T, 3, H, W]) per input of a part."""
    if part.files is not None:
        for path in part.files:
            yield {"path": path}, lambda t, f, path=path: load_file(Path(path), t, f)
        return
    for sample in iter_tar_samples(Path(str(part.shard))):
        meta: dict[str, Any] = {"shard": part.shard, "key": sample["__key__"]}
        if "json" in sample:
            try:
                meta["captions"] = list(sample_json(sample).get("captions", []))
            except Exception:  # a sample with broken json still has an image worth indexing
                meta["captions"] = []
        yield meta, lambda t, f, sample=sample: decode_media(*sample_media(sample), t, f)


def bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterator, ahead: int) -> Iterator:
    """`pool.map` that decodes at most `ahead` inputs in advance (bounded memory on big shards)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ----------------------------------------------------------------------------- parts on disk
def plan_id(ckpt: CheckpointId, parts: list[Part], frames: int) -> str:
    text = json.dumps([ckpt.fingerprint, frames, [p.describe() for p in parts]])
    return hashlib.sha256(text.encode()).hexdigest()


def part_files(parts_dir: Path, i: int) -> tuple[Path, Path, Path]:
    return parts_dir / f"{i:05d}.npy", parts_dir / f"{i:05d}.jsonl", parts_dir / f"{i:05d}.skipped.json"


def write_part(
    parts_dir: Path, i: int, vectors: np.ndarray, metas: list[dict[str, Any]], skipped: Counter
) -> None:
    npy, jsonl, skip = part_files(parts_dir, i)
    atomic_write_bytes(jsonl, b"".join(meta_line(m) for m in metas))
    atomic_write_bytes(skip, json.dumps(dict(skipped)).encode())
    with atomic_file(npy) as tmp, open(tmp, "wb") as f:  # the .npy is the part's commit point
        np.save(f, vectors)
