"""Building an index (`scl index`, and `scl retrieve --images DIR`): embed an image collection with
a checkpoint's ITC projection into a faiss index (layout and fingerprint: `search.store`; the
units of work: `search.parts`).

Inputs are cut into parts (a shard, or `part_size` files) that are embedded and written to
`INDEX/.parts/` one by one, so an interrupted run continues from the finished parts when the same
command runs again. `add=True` embeds only what the index does not hold yet (files by path, shards
by file) and appends it. Unreadable inputs are counted by reason and skipped, never fatal.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scl_cli.data.media import MediaError
from scl_cli.errors import UsageError
from scl_cli.inference import SCL
from scl_cli.io.atomic import atomic_file, atomic_write_json
from scl_cli.search.faiss_index import AUTO_FLAT_MAX, VectorIndex, choose_kind
from scl_cli.search.parts import (
    Part,
    bounded_map,
    held_sources,
    items_of,
    part_files,
    plan_id,
    plan_parts,
    write_part,
)
from scl_cli.search.store import (
    INDEX_FILE,
    META_FILE,
    OFFSETS_FILE,
    PARTS_DIR,
    CheckpointId,
    IndexInfo,
    check_fingerprint,
    checkpoint_id,
    default_index_dir,
    images_dir_name,
    is_index,
    meta_line,
    offsets_of,
    read_info,
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


# ----------------------------------------------------------------------------- embedding
def embed_part(
    model: SCL,
    part: Part,
    batch_size: int,
    frames: int,
    pool: ThreadPoolExecutor,
    advance: Callable[[int], None],
) -> tuple[np.ndarray, list[dict[str, Any]], Counter]:
    """ITC features [n, E] float32 of a part's readable inputs, their metadata, skip counts by reason."""
    transform = model.transform
    frames = max(1, min(frames, model.model_config.vision.max_frames))
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
            itc, _ = model.image_features(torch.stack([p for _, p in stills]), with_tokens=False)
            vectors.append(itc.float().cpu().numpy())
            metas.extend(m for m, _ in stills)
        for meta, pixels in clips:
            itc, _ = model.image_features(pixels.unsqueeze(0), with_tokens=False)
            vectors.append(itc.float().cpu().numpy())
            metas.append({**meta, "frames": int(pixels.shape[0])})
        advance(len(batch))

    batch: list[tuple[dict[str, Any], torch.Tensor]] = []
    for meta, pixels in bounded_map(pool, load, items_of(part), ahead=2 * batch_size):
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
    dim = model.model_config.itc_dim
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), metas, skipped


# ----------------------------------------------------------------------------- building
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
    held = held_sources(out) if existing is not None else set()
    parts = plan_parts(images, data, split, held, part_size)
    source: dict[str, Any] = ({"images": str(Path(images).resolve())} if images is not None
                              else {"data": str(Path(str(data)).resolve()), "split": split})  # fmt: skip

    parts_dir = out / PARTS_DIR
    plan_key = plan_id(ident, parts, frames)
    plan_file = parts_dir / "plan.json"
    if parts_dir.is_dir() and (
        not plan_file.is_file() or json.loads(plan_file.read_text()).get("id") != plan_key
    ):
        say(f"{parts_dir}: parts of another plan (other inputs or checkpoint) discarded")
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_file, {"id": plan_key, "parts": len(parts)})
    done = [i for i in range(len(parts)) if part_files(parts_dir, i)[0].is_file()]
    todo = [i for i in range(len(parts)) if i not in set(done)]
    total_inputs = sum(p.size for p in parts)
    if existing is not None and not parts:
        shutil.rmtree(parts_dir)
        return IndexSummary(out, existing.kind, existing.count, 0, fingerprint=ident.fingerprint,
                            params=dict(existing.params), seconds=time.perf_counter() - started)  # fmt: skip
    if done:
        say(f"resuming: {len(done)} of {len(parts)} parts already embedded in {parts_dir}")

    loaded: SCL | None = None
    if todo or existing is None:
        loaded = SCL.from_pretrained(ckpt, device=device)
        count = sum(parts[i].size for i in done)
        report = progress or (lambda stage, n, total: None)
        report("embed", count, total_inputs)

        def advance(n: int) -> None:
            nonlocal count
            count += n
            report("embed", count, total_inputs)

        with ThreadPoolExecutor(max_workers=4) as pool:
            for i in todo:
                vectors, metas, skipped = embed_part(loaded, parts[i], batch_size, frames, pool, advance)
                write_part(parts_dir, i, vectors, metas, skipped)

    skipped: Counter = Counter()
    for i in range(len(parts)):
        skipped += Counter(json.loads(part_files(parts_dir, i)[2].read_text()))
    dim = existing.dim if existing is not None else loaded.model_config.itc_dim  # type: ignore[union-attr]
    vectors = [np.load(part_files(parts_dir, i)[0]) for i in range(len(parts))]
    added = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    del vectors
    metas = [part_files(parts_dir, i)[1] for i in range(len(parts))]
    summary = _commit(out, ident, loaded, existing, added, metas, skipped, kind, source, frames)
    shutil.rmtree(parts_dir)
    summary.resumed_parts = len(done)
    summary.seconds = time.perf_counter() - started
    return summary


def _commit(
    out: Path,
    ident: CheckpointId,
    loaded: SCL | None,
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
    # Three files, each renamed in when complete; info.json, written last, is the commit point.
    with atomic_file(out / INDEX_FILE) as tmp_index, atomic_file(out / META_FILE) as tmp_meta:
        index.save(tmp_index)
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
        with atomic_file(out / OFFSETS_FILE) as tmp_offsets, open(tmp_offsets, "wb") as f:
            np.save(f, offsets_of(tmp_meta))

    now = time.time()
    if existing is None:
        cfg = loaded.model_config  # type: ignore[union-attr]
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
