"""What a loader reads: each data set's split as shards with sample counts (`Source`), checked
against the disk, and whether every (rank, worker) slot gets shards to read.

A data set is `data.root/NAME` or a location of its own (a folder or URL in place of the name);
either may be a URL (`io.remote`): its manifest is read from there and its shards stay there
(streamed by the loader; not checked one by one before training, a missing one is skipped and
counted as unreadable)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scl_cli.data.shards import MANIFEST, read_manifest, split_entry
from scl_cli.errors import DataError
from scl_cli.io import remote


@dataclass(frozen=True)
class Shard:
    path: Path | str  # a file, or a URL
    samples: int
    first_index: int  # global index of its first sample (unique across the data sets of a loader)
    sha256: str | None = None  # the manifest's checksum (keys the shard cache)


@dataclass(frozen=True)
class Source:
    """One data set's split: its shards in manifest order, and whether they hold images or clips."""

    name: str
    shards: tuple[Shard, ...]
    media: str = "image"  # "image" or "video" (the manifest's `media` entry for the group)
    location: Path | str | None = None  # the data set's folder or URL

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


def parse_source(spec: str, group: str = "splits") -> tuple[str, str]:
    """ "NAME" or "NAME:GROUP" (e.g. "shapes:clips") -> (data set, manifest group). A folder or URL
    may stand for NAME ("s3://bucket/data/shapes:clips"); a URL's "//" and port are no group."""
    head, sep, tail = spec.rpartition(":")
    port = remote.is_url(spec) and tail.isdigit() and "/" not in head.split("://", 1)[-1]
    if sep and head and tail and "/" not in tail and not port:
        return head, tail
    return spec, group


def dataset_location(data_root: Path | str, name: str) -> Path | str:
    """Where data set `name` lives: `data_root/name`, or `name` itself when it is a URL or an
    absolute path."""
    return remote.join(data_root, name)


def load_sources(
    data_root: Path | str, datasets: list[str], split: str, group: str = "splits"
) -> list[Source]:
    """The shards of `split` of each data set ("NAME" or "NAME:GROUP"), local ones checked against
    the disk; `DataError` naming the file."""
    sources, offset = [], 0
    for spec in datasets:
        name, source_group = parse_source(spec, group)
        dataset_dir = dataset_location(data_root, name)
        manifest = read_manifest(dataset_dir)
        entry = split_entry(manifest, split, dataset_dir, source_group)
        shards = []
        for item in entry["shards"]:
            path = remote.join(dataset_dir, item["file"])
            if not remote.is_url(path) and not Path(path).is_file():
                raise DataError(
                    f"{path}: listed in {remote.join(dataset_dir, MANIFEST)} but missing — prepare the data set again"
                )
            shards.append(Shard(path, int(item["samples"]), offset, item.get("sha256")))
            offset += int(item["samples"])
        media = (manifest.get("media") or {}).get(source_group, "image")
        sources.append(Source(remote.basename(name), tuple(shards), media, dataset_dir))
    return sources


def source_media(data_root: Path | str, datasets: list[str], split: str, group: str = "splits") -> set[str]:
    """The media kinds ("image", "video") the data sets' `split` holds."""
    return {src.media for src in load_sources(data_root, datasets, split, group)}


def check_slots(
    sources: list[Source], world_size: int, num_workers: int, split: str, data_root: Path | str
) -> None:
    """Every (rank, worker) slot must own at least one non-empty shard of every data set; else a
    `DataError` naming the manifest and the fix. Cheap (manifest counts only): run it before
    starting processes."""
    workers = max(num_workers, 1)
    slots = world_size * workers
    for src in sources:
        where = remote.join(src.location or dataset_location(data_root, src.name), MANIFEST)
        if len(src.shards) < slots:
            raise DataError(
                f"{where}: split '{split}' has {len(src.shards)} shards, fewer than the {slots} loader slots "
                f"({world_size} ranks x {workers} workers) — use fewer data.num_workers "
                "or prepare the data set with more, smaller shards"
            )
        for slot in range(slots):
            if sum(s.samples for i, s in enumerate(src.shards) if i % slots == slot) == 0:
                rank, worker = divmod(slot, workers)
                raise DataError(f"{where}: the shards of rank {rank}, worker {worker} hold no samples")


def check_train_data(
    data_root: Path | str,
    datasets: list[str],
    split: str,
    world_size: int,
    num_workers: int,
    group: str = "splits",
) -> None:
    """What `build_train_loader` checks first, for all ranks at once (manifests and shard files)."""
    check_slots(load_sources(data_root, datasets, split, group), world_size, num_workers, split, data_root)
