"""The index directory on disk, the checkpoint fingerprint, and where indexes are cached.

Layout::

    INDEX/
        info.json          format, checkpoint path + fingerprint + step, model sizes, dim, kind,
                           search params, count, sources, skipped inputs, created_by; written last
                           (the commit point of a build or an append)
        index.faiss        the vectors (faiss), ids 0..count-1
        meta.jsonl         one JSON line per vector, in id order: {"id", "path"} or {"id", "shard",
                           "key"}, plus "captions" (shards) and "frames" (videos)
        meta.offsets.npy   int64 byte offset of each line: a query reads only its hits' lines
        .parts/            while building: embedded chunks (NNNNN.npy + NNNNN.jsonl), kept until
                           the index is committed so an interrupted `scl index` resumes

Checkpoint fingerprint: sha256 over the weights file's size, its first, middle and last MiB, and
the checkpoint's config.json (which holds the step). It reads at most 3 MiB, so every query checks
it; a retrained or fine-tuned checkpoint changes it (new step, new weights) while a copy of the same
checkpoint elsewhere keeps it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scl_cli import __version__
from scl_cli.errors import CheckpointError, UsageError
from scl_cli.io.atomic import atomic_write_json
from scl_cli.io.checkpoints import CONFIG_FILE, MODEL_FILE, latest_checkpoint
from scl_cli.io.fingerprint import sampled_windows

FORMAT, VERSION = "scl-index", 1
INFO_FILE, INDEX_FILE, META_FILE, OFFSETS_FILE = "info.json", "index.faiss", "meta.jsonl", "meta.offsets.npy"
PARTS_DIR = ".parts"
INDEXES_DIR = "indexes"


# ----------------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class CheckpointId:
    """Which weights `--ckpt` names: `path` (the checkpoint directory, or the published file),
    `fingerprint` (see the module docstring) and `step` (None for a published file)."""

    path: Path
    fingerprint: str
    step: int | None

    @property
    def short(self) -> str:
        return self.fingerprint[:12]


def checkpoint_id(ckpt: Path) -> CheckpointId:
    """Resolve `--ckpt` (checkpoint dir, run dir -> newest checkpoint, a file inside one, or a
    published .ckpt) and fingerprint it without loading the weights."""
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise CheckpointError(f"checkpoint {ckpt} does not exist")
    if ckpt.is_file() and ckpt.name in (MODEL_FILE, CONFIG_FILE):
        ckpt = ckpt.parent
    if ckpt.is_dir():
        found = latest_checkpoint(ckpt)
        if found is None or not (found / MODEL_FILE).is_file():
            raise CheckpointError(f"no checkpoint found in {ckpt}: expected a run directory with "
                                  f"checkpoints/step-N/ or a directory holding {MODEL_FILE}")  # fmt: skip
        weights, config = found / MODEL_FILE, found / CONFIG_FILE
    else:
        found, weights, config = ckpt, ckpt, None
    digest = hashlib.sha256(b"scl-fingerprint-1")
    for chunk in sampled_windows(weights):
        digest.update(chunk)
    step = None
    if config is not None and config.is_file():
        raw = config.read_bytes()
        digest.update(raw)
        try:
            step = json.loads(raw).get("step")
        except (ValueError, AttributeError):
            step = None
    return CheckpointId(found.resolve(), digest.hexdigest(), step)


def cache_roots(ckpt: Path) -> list[Path]:
    """Folders whose `indexes/` may hold indexes made from `--ckpt`: the folder it names (a file:
    its folder), the resolved checkpoint directory and, for RUN/checkpoints/step-N, the run."""
    ckpt = Path(ckpt)
    roots = [ckpt if ckpt.is_dir() else ckpt.parent]
    resolved = latest_checkpoint(ckpt) if ckpt.is_dir() else None
    if resolved is not None:
        roots.append(resolved)
        if resolved.parent.name == "checkpoints":
            roots.append(resolved.parent.parent)
    unique: list[Path] = []
    for root in roots:
        if root.resolve() not in [u.resolve() for u in unique]:
            unique.append(root)
    return unique


def default_index_dir(ckpt: Path, name: str) -> Path:
    """Where `scl index --ckpt CKPT` writes without `--out`: CKPT_DIR/indexes/NAME."""
    return cache_roots(ckpt)[0] / INDEXES_DIR / name


def images_dir_name(folder: Path) -> str:
    """Cache name of an image folder: its name plus a hash of its absolute path."""
    resolved = Path(folder).resolve()
    return f"{resolved.name or 'images'}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


# ----------------------------------------------------------------------------- info.json
@dataclass
class IndexInfo:
    checkpoint: str
    fingerprint: str
    step: int | None
    model: dict[str, Any]  # itc_dim, image_size, max_len, max_frames
    dim: int
    kind: str
    kind_requested: str
    params: dict[str, Any]
    count: int
    sources: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    frames: int = 4
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    created_by: str = f"scl {__version__}"
    format: str = FORMAT
    version: int = VERSION

    def write(self, index_dir: Path) -> None:
        atomic_write_json(Path(index_dir) / INFO_FILE, asdict(self), durable=True)


def is_index(path: Path) -> bool:
    return (Path(path) / INFO_FILE).is_file()


def read_info(index_dir: Path) -> IndexInfo:
    """info.json of a complete index; `UsageError` naming the folder otherwise."""
    path = Path(index_dir) / INFO_FILE
    if not path.is_file():
        hint = (" (an interrupted build: run the same `scl index` command again to finish it)"
                if (Path(index_dir) / PARTS_DIR).is_dir() else "")  # fmt: skip
        raise UsageError(
            f"{index_dir}: not an index, {INFO_FILE} is missing{hint} — make one with `scl index`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(
            f"{path}: not an scl index (format {data.get('format') if isinstance(data, dict) else None!r})"
        )
    if int(data.get("version", 0)) > VERSION:
        raise UsageError(
            f"{path}: index version {data['version']}; this scl reads up to {VERSION}: upgrade scl"
        )
    known = IndexInfo.__dataclass_fields__
    return IndexInfo(**{k: v for k, v in data.items() if k in known})


def check_fingerprint(info: IndexInfo, ckpt: CheckpointId, index_dir: Path) -> None:
    """Refuse an index built with other weights than `ckpt` (one line, exit code 2)."""
    if info.fingerprint != ckpt.fingerprint:
        built = f"{info.checkpoint}" + (f" (step {info.step})" if info.step is not None else "")
        raise CheckpointError(
            f"{index_dir} was built with checkpoint {built}, fingerprint {info.fingerprint[:12]}, but --ckpt is "
            f"{ckpt.path} (fingerprint {ckpt.short}): its vectors would not match this model's queries — "
            f"rebuild it with `scl index --ckpt {ckpt.path} ...` or query it with --ckpt {info.checkpoint}"
        )


def find_indexes(
    ckpt: Path, fingerprint: str
) -> tuple[list[tuple[Path, IndexInfo]], list[tuple[Path, IndexInfo]]]:
    """Indexes cached for `--ckpt` (see `cache_roots`), newest first: (made from these weights, others)."""
    same, other = [], []
    seen: set[Path] = set()
    for root in cache_roots(ckpt):
        folder = root / INDEXES_DIR
        if not folder.is_dir():
            continue
        for candidate in folder.iterdir():
            if candidate.resolve() in seen or not is_index(candidate):
                continue
            seen.add(candidate.resolve())
            try:
                info = read_info(candidate)
            except UsageError:
                continue
            (same if info.fingerprint == fingerprint else other).append((candidate, info))
    same.sort(key=lambda item: item[1].updated, reverse=True)
    other.sort(key=lambda item: item[1].updated, reverse=True)
    return same, other


# ----------------------------------------------------------------------------- metadata
def meta_line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class MetaStore:
    """Random access to meta.jsonl through meta.offsets.npy (memory-mapped): reading k hits costs
    k seeks, whatever the size of the collection."""

    def __init__(self, index_dir: Path) -> None:
        self.path = Path(index_dir) / META_FILE
        self.offsets = np.load(Path(index_dir) / OFFSETS_FILE, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.offsets)

    def get(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        out = []
        with open(self.path, "rb") as f:
            for i in ids:
                f.seek(int(self.offsets[int(i)]))
                out.append(json.loads(f.readline()))
        return out

    def iter_all(self) -> Iterable[dict[str, Any]]:
        with open(self.path, "rb") as f:
            for line in f:
                yield json.loads(line)


def offsets_of(meta_file: Path) -> np.ndarray:
    """Byte offset of each line of a jsonl file."""
    offsets, position = [], 0
    with open(meta_file, "rb") as f:
        for line in f:
            offsets.append(position)
            position += len(line)
    return np.asarray(offsets, dtype=np.int64)
