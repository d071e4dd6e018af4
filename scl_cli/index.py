"""Engine of `scl index`: embed an image collection with a checkpoint's ITC projection into a
faiss index (layout and fingerprint: `scl_cli.retrieval.store`).

Inputs are cut into parts (a shard, or `part_size` files) that are embedded and written to
`INDEX/.parts/` one by one, so an interrupted run continues from the finished parts when the same
command runs again. `add=True` embeds only what the index does not hold yet (files by path, shards
by file) and appends it. Unreadable inputs are counted by reason and skipped, never fatal.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scl_cli.data.loader import load_sources
from scl_cli.data.shards import iter_tar_samples
from scl_cli.data.task_batches import sample_json
from scl_cli.data.transforms import ImageTransform
from scl_cli.errors import UsageError
from scl_cli.model.loading import LoadedModel, load_model
from scl_cli.retrieval.faiss_index import AUTO_FLAT_MAX, VectorIndex, choose_kind
from scl_cli.retrieval.features import image_features
from scl_cli.retrieval.media import MediaError, decode_media, list_media_files, load_file, sample_media
from scl_cli.retrieval.store import (
    INDEX_FILE,
    META_FILE,
    OFFSETS_FILE,
    PARTS_DIR,
    CheckpointId,
    IndexInfo,
    MetaStore,
    check_fingerprint,
    checkpoint_id,
    default_index_dir,
    images_dir_name,
    is_index,
    meta_line,
    offsets_of,
    read_info,
    write_atomic,
)

Progress = Callable[[str, int, int], None]
PART_SIZE = 512
DEFAULT_FRAMES = 4


@dataclass
class IndexSummary:
    path: Path
    kind: str
    total: int  # vectors in the index now
    added: int  # vectors this run added
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> inputs skipped this run
    resumed_parts: int = 0
    seconds: float = 0.0
    fingerprint: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.added / self.seconds if self.seconds > 0 else 0.0


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
def _data_dir(data: Path) -> Path:
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
    folder = _data_dir(data)
    shards = load_sources(folder.parent, [folder.name], split)[0].shards
    return [
        Part(shard=str(s.path.resolve()), samples=s.samples)
        for s in shards
        if str(s.path.resolve()) not in held
    ]


def _held_sources(index_dir: Path) -> set[str]:
    held: set[str] = set()
    for record in MetaStore(index_dir).iter_all():
        held.add(record["path"] if "path" in record else record["shard"])
    return held


# ----------------------------------------------------------------------------- embedding
def _items_of(part: Part) -> Iterator[tuple[dict[str, Any], Callable[[ImageTransform, int], torch.Tensor]]]:
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


def embed_part(
    loaded: LoadedModel,
    part: Part,
    batch_size: int,
    frames: int,
    device: torch.device,
    pool: ThreadPoolExecutor,
    advance: Callable[[int], None],
) -> tuple[np.ndarray, list[dict[str, Any]], Counter]:
    """ITC features [n, E] float32 of a part's readable inputs, their metadata, skip counts by reason."""
    model = loaded.model
    transform = ImageTransform(model.config.vision.image_size)
    frames = max(1, min(frames, model.config.vision.max_frames))
    skipped: Counter = Counter()
    vectors: list[np.ndarray] = []
    metas: list[dict[str, Any]] = []

    def load(item):
        meta, loader = item
        try:
            return meta, loader(transform, frames)
        except MediaError as err:
            return meta, err

    def flush(batch: list[tuple[dict[str, Any], torch.Tensor]]) -> None:
        # Images batch together; clips go one by one (their frame counts may differ).
        stills = [(m, p) for m, p in batch if p.shape[0] == 1]
        clips = [(m, p) for m, p in batch if p.shape[0] > 1]
        if stills:
            itc, _ = image_features(model, torch.stack([p for _, p in stills]).to(device), with_tokens=False)
            vectors.append(itc.float().cpu().numpy())
            metas.extend(m for m, _ in stills)
        for meta, pixels in clips:
            itc, _ = image_features(model, pixels.unsqueeze(0).to(device), with_tokens=False)
            vectors.append(itc.float().cpu().numpy())
            metas.append({**meta, "frames": int(pixels.shape[0])})
        advance(len(batch))

    batch: list[tuple[dict[str, Any], torch.Tensor]] = []
    for meta, pixels in _bounded_map(pool, load, _items_of(part), ahead=2 * batch_size):
        if isinstance(pixels, MediaError):
            skipped[str(pixels)] += 1
            advance(1)
            continue
        batch.append((meta, pixels))
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    dim = model.config.itc_dim
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), metas, skipped


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterator, ahead: int) -> Iterator:
    """`pool.map` that decodes at most `ahead` inputs in advance (bounded memory on big shards)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ----------------------------------------------------------------------------- parts on disk
def _plan_id(ckpt: CheckpointId, parts: list[Part], frames: int) -> str:
    import hashlib

    text = json.dumps([ckpt.fingerprint, frames, [p.describe() for p in parts]])
    return hashlib.sha256(text.encode()).hexdigest()


def _part_files(parts_dir: Path, i: int) -> tuple[Path, Path, Path]:
    return parts_dir / f"{i:05d}.npy", parts_dir / f"{i:05d}.jsonl", parts_dir / f"{i:05d}.skipped.json"


def _write_part(
    parts_dir: Path, i: int, vectors: np.ndarray, metas: list[dict[str, Any]], skipped: Counter
) -> None:
    npy, jsonl, skip = _part_files(parts_dir, i)
    write_atomic(jsonl, b"".join(meta_line(m) for m in metas))
    write_atomic(skip, json.dumps(dict(skipped)).encode())
    tmp = npy.with_name(f".tmp-{npy.name}")
    with open(tmp, "wb") as f:
        np.save(f, vectors)
    tmp.replace(npy)  # the .npy is the part's commit point


# ----------------------------------------------------------------------------- the engine
def build_index(
    ckpt: Path,
    out: Path | None = None,
    images: Path | None = None,
    data: Path | None = None,
    split: str = "test",
    kind: str = "auto",
    add: bool = False,
    batch_size: int = 32,
    frames: int = DEFAULT_FRAMES,
    device: str = "auto",
    progress: Progress | None = None,
    part_size: int = PART_SIZE,
    info_message: Callable[[str], None] | None = None,
) -> IndexSummary:
    """Embed `images` (a folder) or `data` (a prepared data set, split `split`) with checkpoint
    `ckpt` into the index folder `out` (default: CKPT/indexes/NAME). `add` appends to an existing
    index; without it an existing index is an error."""
    started = time.perf_counter()
    if (images is None) == (data is None):
        raise UsageError("pass exactly one of --images DIR or --data DATASET_FOLDER")
    choose_kind(0, kind)  # validates the name before any work
    say = info_message or (lambda msg: None)
    ident = checkpoint_id(ckpt)
    if out is None:
        name = images_dir_name(images) if images is not None else f"{Path(str(data)).resolve().name}-{split}"
        out = default_index_dir(ckpt, name)
    out = Path(out)
    existing: IndexInfo | None = None
    if is_index(out):
        existing = read_info(out)
        if not add:
            raise UsageError(f"{out} already holds an index ({existing.count} vectors) — pass --add to append "
                             "new images to it, or another --out")  # fmt: skip
        check_fingerprint(existing, ident, out)
    held = _held_sources(out) if existing is not None else set()
    parts = plan_parts(images, data, split, held, part_size)
    source: dict[str, Any] = ({"images": str(Path(images).resolve())} if images is not None
                              else {"data": str(Path(str(data)).resolve()), "split": split})  # fmt: skip

    parts_dir = out / PARTS_DIR
    plan_id = _plan_id(ident, parts, frames)
    plan_file = parts_dir / "plan.json"
    if parts_dir.is_dir() and (
        not plan_file.is_file() or json.loads(plan_file.read_text()).get("id") != plan_id
    ):
        say(f"{parts_dir}: parts of another plan (other inputs or checkpoint) discarded")
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(plan_file, json.dumps({"id": plan_id, "parts": len(parts)}).encode())
    done = [i for i in range(len(parts)) if _part_files(parts_dir, i)[0].is_file()]
    todo = [i for i in range(len(parts)) if i not in set(done)]
    total_inputs = sum(p.size for p in parts)
    if existing is not None and not parts:
        shutil.rmtree(parts_dir)
        return IndexSummary(out, existing.kind, existing.count, 0, fingerprint=ident.fingerprint,
                            params=dict(existing.params), seconds=time.perf_counter() - started)  # fmt: skip
    if done:
        say(f"resuming: {len(done)} of {len(parts)} parts already embedded in {parts_dir}")

    loaded: LoadedModel | None = None
    if todo or existing is None:
        dev = torch.device(
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        loaded = load_model(ckpt)
        loaded.model.to(dev).eval()
        count = sum(parts[i].size for i in done)
        report = progress or (lambda stage, n, total: None)
        report("embed", count, total_inputs)

        def advance(n: int) -> None:
            nonlocal count
            count += n
            report("embed", count, total_inputs)

        with ThreadPoolExecutor(max_workers=4) as pool:
            for i in todo:
                vectors, metas, skipped = embed_part(loaded, parts[i], batch_size, frames, dev, pool, advance)
                _write_part(parts_dir, i, vectors, metas, skipped)

    skipped: Counter = Counter()
    for i in range(len(parts)):
        skipped += Counter(json.loads(_part_files(parts_dir, i)[2].read_text()))
    dim = existing.dim if existing is not None else loaded.model.config.itc_dim  # type: ignore[union-attr]
    vectors = [np.load(_part_files(parts_dir, i)[0]) for i in range(len(parts))]
    added = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    del vectors
    metas = [_part_files(parts_dir, i)[1] for i in range(len(parts))]
    summary = _commit(out, ident, loaded, existing, added, metas, skipped, kind, source, frames)
    shutil.rmtree(parts_dir)
    summary.resumed_parts = len(done)
    summary.seconds = time.perf_counter() - started
    return summary


def _commit(
    out: Path,
    ident: CheckpointId,
    loaded: LoadedModel | None,
    existing: IndexInfo | None,
    added: np.ndarray,
    metas: list[Path],
    skipped: Counter,
    kind: str,
    source: dict[str, Any],
    frames: int,
) -> IndexSummary:
    """Build or extend the faiss index and write index.faiss, meta.jsonl, offsets, then info.json."""
    if existing is None:
        if len(added) == 0:
            raise UsageError(f"nothing to index: no readable image in {source.get('images') or source.get('data')}"
                             + (f" (skipped: {dict(skipped)})" if skipped else ""))  # fmt: skip
        index = VectorIndex.build(added, kind)
        first = 0
    else:
        index = VectorIndex.load(out / INDEX_FILE, existing.kind, existing.params)
        first = index.ntotal
        wanted = choose_kind(first + len(added), existing.kind_requested if kind == "auto" else kind)
        if wanted != index.kind:  # e.g. an auto index growing past AUTO_FLAT_MAX
            index = VectorIndex.build(np.concatenate([index.reconstruct_all(), added]), wanted)
        else:
            index.add(added)
    tmp_index = out / f".tmp-{INDEX_FILE}"
    index.save(tmp_index)
    tmp_meta = out / f".tmp-{META_FILE}"
    if existing is not None:
        shutil.copyfile(out / META_FILE, tmp_meta)
    with open(tmp_meta, "ab") as f:
        next_id = first
        for part in metas:
            for line in part.read_bytes().splitlines():
                f.write(meta_line({"id": next_id, **json.loads(line)}))
                next_id += 1
    if next_id != index.ntotal:
        raise RuntimeError(f"{out}: {index.ntotal} vectors but {next_id} metadata lines")
    offsets = offsets_of(tmp_meta)
    tmp_offsets = out / f".tmp-{OFFSETS_FILE}"
    with open(tmp_offsets, "wb") as f:
        np.save(f, offsets)
    tmp_index.replace(out / INDEX_FILE)
    tmp_meta.replace(out / META_FILE)
    tmp_offsets.replace(out / OFFSETS_FILE)

    now = time.time()
    if existing is None:
        cfg = loaded.model.config  # type: ignore[union-attr]
        info = IndexInfo(
            checkpoint=str(ident.path), fingerprint=ident.fingerprint, step=ident.step,
            model={"itc_dim": cfg.itc_dim, "image_size": cfg.vision.image_size, "max_len": cfg.text.max_len,
                   "max_frames": cfg.vision.max_frames},
            dim=index.dim, kind=index.kind, kind_requested=kind, params=index.params, count=index.ntotal,
            sources=[source], skipped=dict(skipped), frames=frames, created=now, updated=now,
        )  # fmt: skip
    else:
        info = existing
        info.kind, info.params, info.count, info.updated = index.kind, index.params, index.ntotal, now
        if kind != "auto":
            info.kind_requested = kind
        if source not in info.sources:
            info.sources.append(source)
        info.skipped = dict(Counter(info.skipped) + skipped)
    info.write(out)
    return IndexSummary(out, index.kind, index.ntotal, len(added), dict(skipped), fingerprint=ident.fingerprint,
                        params=dict(index.params))  # fmt: skip


__all__ = ["AUTO_FLAT_MAX", "IndexSummary", "build_index", "plan_parts"]
