"""Resumable shard writing: the writer stage of `scl prepare`.

The inputs of a split are cut into consecutive runs of `shard_size` records; run k becomes
`SPLIT/00000k.tar`. A worker fetches/reads each record's images, turns them into JPEGs
(`images.process_image`), writes the shard under a temporary name and renames it when complete,
then records what went in (`.shards/SPLIT/00000k.json`: input ids, a digest of the inputs and
settings, the skips, size and sha256). A re-run finds that record, sees the same inputs and
settings, and keeps the shard instead of redoing it; anything else is written again. A shard
whose every input was skipped has a record but no tar.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scl_cli.data.download import FetchError, FetchSettings, fetcher_for, map_threads
from scl_cli.data.images import ImageSettings, ImageSkip, process_image
from scl_cli.data.shards import SHARD_PATTERN, ShardWriter
from scl_cli.data.sources.base import ImageRef, Record, Skip
from scl_cli.data.video import VideoError, check_video, is_video_member
from scl_cli.io.atomic import atomic_write_json

STATE_DIR = ".shards"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class WriteSettings:
    """Everything besides the inputs that decides a shard's bytes (part of the resume check)."""

    image: ImageSettings = field(default_factory=ImageSettings)
    shard_size: int = 1000
    version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.image), "shard_size": self.shard_size, "version": self.version}


@dataclass
class ShardJob:
    """Shard `index` of `split`: its records, and the digest that identifies them with the settings."""

    split: str
    index: int
    records: list[Record]
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = inputs_digest(self.records)


@dataclass
class ShardResult:
    """What one shard holds; `entry` is its manifest line (None when every input was skipped)."""

    split: str
    index: int
    inputs: int
    samples: int
    images: int
    entry: dict[str, Any] | None
    skipped: list[dict[str, str]]
    resumed: bool = False
    seconds: float = 0.0


def inputs_digest(records: list[Record]) -> str:
    text = json.dumps([r.identity() for r in records], sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"), default=str)  # fmt: skip
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def state_path(root: Path, split: str, index: int) -> Path:
    return root / STATE_DIR / split / SHARD_PATTERN.format(index).replace(".tar", ".json")


def tar_path(root: Path, split: str, index: int) -> Path:
    return root / split / SHARD_PATTERN.format(index)


def finished(root: Path, job: ShardJob, settings: WriteSettings) -> ShardResult | None:
    """The result of an earlier identical run of `job`, if its record and tar are intact."""
    path = state_path(root, job.split, job.index)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        entry, samples, images, skipped = state["entry"], state["samples"], state["images"], state["skipped"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if state.get("digest") != job.digest or state.get("settings") != settings.to_json():
        return None
    if entry is not None:
        tar = root / entry["file"]
        if not tar.is_file() or tar.stat().st_size != state.get("bytes"):
            return None
    return ShardResult(job.split, job.index, len(job.records), samples, images, entry, skipped, resumed=True)


def _read_ref(ref: ImageRef, fetch: FetchSettings, connections: int) -> bytes:
    if ref.kind == "url":
        return fetcher_for(fetch, connections).fetch(ref.location)
    try:
        with open(ref.location, "rb") as f:
            if ref.kind == "tar":
                f.seek(ref.offset)
                return f.read(ref.size)
            return f.read()
    except FileNotFoundError as err:
        raise ImageSkip("missing_image") from err
    except IsADirectoryError as err:
        raise ImageSkip("missing_image", "a folder") from err
    except OSError as err:
        raise ImageSkip("unreadable_image", err.strerror or str(err)) from err


def build_sample(
    record: Record, image: ImageSettings, fetch: FetchSettings, connections: int
) -> dict[str, Any] | Skip:
    """The tar sample of `record` (every image fetched and re-encoded), or the `Skip` saying why not."""
    sample: dict[str, Any] = {"__key__": record.key}
    for name, ref in record.images.items():
        try:
            data = _read_ref(ref, fetch, connections)
            # Clips are stored as they come (decoding happens per step, a few frames at a time);
            # images are checked and re-encoded.
            sample[name] = check_video(data) if is_video_member(name) else process_image(data, image)
        except (ImageSkip, FetchError, VideoError) as err:
            return Skip(record.id, err.reason, ref.describe(), record.split)
    # Texts were checked by the reader; a non-UTF-8 file name or id is kept, its odd bytes as "?".
    text = json.dumps(record.meta, ensure_ascii=False, separators=(",", ":"))
    sample["json"] = text.encode("utf-8", errors="replace")
    return sample


def write_shard(root: Path, job: ShardJob, settings: WriteSettings, fetch: FetchSettings,
                threads: int = 1) -> ShardResult:  # fmt: skip
    """Write shard `job.index` of `job.split` under `root` (temp name, then rename), then its record."""
    started = time.perf_counter()
    uses_network = any(ref.kind == "url" for r in job.records for ref in r.images.values())
    n_threads = threads if uses_network else 1
    skipped: list[dict[str, str]] = []
    samples = images = 0
    final = tar_path(root, job.split, job.index)
    final.unlink(missing_ok=True)  # a tar without its record is from an interrupted or other run

    def work(record: Record) -> dict[str, Any] | Skip:
        return build_sample(record, settings.image, fetch, n_threads)

    writer = ShardWriter(final.parent, shard_size=max(1, len(job.records)), relative_to=root,
                         first_shard=job.index)  # fmt: skip
    try:
        for outcome in map_threads(work, job.records, n_threads):
            if isinstance(outcome, Skip):
                skipped.append(outcome.to_json())
                continue
            writer.write(outcome)
            samples += 1
            images += sum(1 for k in outcome if k.endswith("jpg") or is_video_member(k))
        writer.close()
    except BaseException:  # interrupted (Ctrl-C) or failed: no half shard under the final name
        writer.abort()
        raise
    entry = writer.shards[0] if writer.shards else None
    state = {
        "split": job.split,
        "index": job.index,
        "settings": settings.to_json(),
        "digest": job.digest,
        "ids": [r.id for r in job.records],
        "samples": samples,
        "images": images,
        "entry": entry,
        "bytes": final.stat().st_size if entry else 0,
        "skipped": skipped,
    }
    path = state_path(root, job.split, job.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, state, indent=None)
    return ShardResult(job.split, job.index, len(job.records), samples, images, entry, skipped,
                       seconds=time.perf_counter() - started)  # fmt: skip
