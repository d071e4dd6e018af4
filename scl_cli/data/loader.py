"""The pre-training loader: an endless, deterministic, resumable stream of image-caption batches.

Shard arithmetic (cf. open_clip's `ResampledShards2`/`detshuffle2`, spelled out here):
- slots: `world_size * W` (rank, worker) pairs, `W = max(num_workers, 1)`; shard i of each
  data set belongs to slot `i % slots`. Every slot loops over its shards epoch after epoch.
- one epoch of a slot: its shards in an order seeded by (seed, data set, rank, worker, epoch),
  read sequentially through a bounded shuffle buffer seeded the same way. The buffer is run on
  sample *positions* computed from the manifest counts, so the epoch's order is known before
  any byte is read, no sample repeats within it, and resuming mid-epoch skips shards unread.
- mixing: the data set of a slot's p-th sample is a weighted draw seeded by (seed, rank,
  worker, p); the sample's own random choices (caption, crop) come from a generator seeded by
  (seed, rank, worker, p). Nothing depends on history, so resuming needs no replay.
- batches are built inside a worker; DataLoader hands them out round-robin (worker b % W gives
  batch b). Resuming at batch b shifts the worker roles by b % W so the stream continues exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from scl_cli.data.shards import MANIFEST, iter_tar_samples, read_manifest, split_entry
from scl_cli.data.tokenizer import TextTokenizer
from scl_cli.data.transforms import ImageTransform
from scl_cli.data.video import VideoError, decode_clip, is_video_member
from scl_cli.errors import DataError, UsageError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_MIX_BLOCK = 4096  # data set choices are drawn this many positions at a time


@dataclass(frozen=True)
class Shard:
    path: Path
    samples: int
    first_index: int  # global index of its first sample (unique across the data sets of a loader)


@dataclass(frozen=True)
class Source:
    """One data set's split: its shards in manifest order, and whether they hold images or clips."""

    name: str
    shards: tuple[Shard, ...]
    media: str = "image"  # "image" or "video" (the manifest's `media` entry for the group)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


def parse_source(spec: str, group: str = "splits") -> tuple[str, str]:
    """"NAME" or "NAME:GROUP" (e.g. "shapes:clips") -> (data set folder, manifest group)."""
    name, _, named_group = spec.partition(":")
    return name, named_group or group


def load_sources(data_root: Path, datasets: list[str], split: str, group: str = "splits") -> list[Source]:
    """The shards of `split` of each data set ("NAME" or "NAME:GROUP"), checked against the disk;
    `DataError` naming the file."""
    sources, offset = [], 0
    for spec in datasets:
        name, source_group = parse_source(spec, group)
        dataset_dir = Path(data_root) / name
        manifest = read_manifest(dataset_dir)
        entry = split_entry(manifest, split, dataset_dir, source_group)
        shards = []
        for item in entry["shards"]:
            path = dataset_dir / item["file"]
            if not path.is_file():
                raise DataError(
                    f"{path}: listed in {dataset_dir / MANIFEST} but missing — prepare the data set again"
                )
            shards.append(Shard(path, int(item["samples"]), offset))
            offset += int(item["samples"])
        media = (manifest.get("media") or {}).get(source_group, "image")
        sources.append(Source(name, tuple(shards), media))
    return sources


def bounded_shuffle(n: int, buffer: int, rng: random.Random) -> list[int]:
    """Output order of a shuffle buffer of size `buffer` fed positions 0..n-1: `out[t]` is the input
    position emitted t-th. Every position appears once, and `out[t] < t + buffer + 1`."""
    out, held = [], []
    for position in range(n):
        if len(held) < buffer:
            held.append(position)
            continue
        j = rng.randrange(buffer)
        out.append(held[j])
        held[j] = position
    rng.shuffle(held)
    out.extend(held)
    return out


def _numpy_rng(*parts: object) -> np.random.Generator:
    text = "/".join(str(p) for p in parts)
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "little"))


def _replay_blocks(
    block: Callable[[int], np.ndarray], size: int, start: int, n_sources: int
) -> tuple[Iterator[int], list[int]]:
    """Data-set choices drawn `size` at a time by `block(b)` (a pure function of b), from slot
    position `start` on, and how many each data set gave before `start` (to resume its reader)."""
    first_block, within = divmod(start, size)
    consumed = np.zeros(n_sources, dtype=np.int64)
    for b in range(first_block):
        consumed += np.bincount(block(b), minlength=n_sources)
    consumed += np.bincount(block(first_block)[:within], minlength=n_sources)

    def choices() -> Iterator[int]:
        b, skip = first_block, within
        while True:
            yield from block(b)[skip:].tolist()
            b, skip = b + 1, 0

    return choices(), consumed.tolist()


class _SlotReader:
    """Endless raw samples of one data set for one (rank, worker) slot, resumable at any count."""

    def __init__(
        self, shards: list[Shard], seed: int, source: int, rank: int, worker: int, buffer: int
    ) -> None:
        self.shards = shards
        self.tag = f"scl-loader/{seed}/{source}/{rank}/{worker}"
        self.buffer = buffer
        self.epoch_samples = sum(s.samples for s in shards)

    def samples(self, start: int) -> Iterator[tuple[dict[str, Any], int]]:
        """(raw sample, global index) from the slot's `start`-th sample on, forever."""
        epoch, offset = divmod(start, self.epoch_samples)
        while True:
            yield from self._epoch(epoch, offset)
            epoch, offset = epoch + 1, 0

    def _epoch(self, epoch: int, offset: int) -> Iterator[tuple[dict[str, Any], int]]:
        rng = random.Random(f"{self.tag}/{epoch}")
        shards = list(self.shards)
        rng.shuffle(shards)
        order = bounded_shuffle(self.epoch_samples, self.buffer, rng)
        already = bytearray(self.epoch_samples)
        for position in order[:offset]:
            already[position] = 1
        remaining = order[offset:]
        if not remaining:
            return
        inputs = self._read_from(shards, min(remaining))
        held: dict[int, tuple[dict[str, Any], int]] = {}
        for position in remaining:
            while position not in held:
                got, sample, index = next(inputs)
                if not already[got]:  # samples emitted before a resume point are read past, not kept
                    held[got] = (sample, index)
            yield held.pop(position)

    @staticmethod
    def _read_from(shards: list[Shard], first: int) -> Iterator[tuple[int, dict[str, Any], int]]:
        """(epoch position, raw sample, global index) in reading order, from position `first`."""
        start = 0
        for shard in shards:
            end = start + shard.samples
            if end > first:
                count = max(0, first - start)
                for sample in iter_tar_samples(shard.path, skip=count):
                    if count == shard.samples:
                        raise _count_mismatch(shard)
                    yield start + count, sample, shard.first_index + count
                    count += 1
                if count != shard.samples:
                    raise _count_mismatch(shard)
            start = end


def _count_mismatch(shard: Shard) -> DataError:
    return DataError(
        f"{shard.path}: holds a different number of samples than {MANIFEST} says ({shard.samples}) "
        "— prepare the data set again"
    )


class PretrainStream(IterableDataset):
    """Endless batches for one rank: `images` uint8 [B, T, 3, H, W] (pixels; the step normalises
    them on its device, see `transforms.to_model_input` — a quarter of float32's bytes through the
    worker queue and the host-device copy), `text_ids` int64 [B, L], `text_mask` int64 [B, L]
    (1 = real token), `index` int64 [B] (global sample index).

    T is 1 for images and `num_frames` for clips. When image and video data sets are mixed, each
    batch draws its media first (by the summed weights of each kind), then its samples from the
    data sets of that kind: a batch never mixes frame counts."""

    def __init__(
        self,
        sources: list[Source],
        weights: list[float],
        tokenizer: TextTokenizer,
        transform: ImageTransform,
        max_len: int,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int,
        shuffle_buffer: int,
        start_batch: int,
        collate: Callable[[list[tuple[dict[str, Any], int, random.Random]]], dict[str, torch.Tensor]] | None = None,
        num_frames: int = 4,
    ) -> None:
        self.sources, self.tokenizer, self.transform = sources, tokenizer, transform
        self.num_frames = num_frames
        total = float(sum(weights))
        self.weights = [float(w) for w in weights]
        self.probabilities = np.array([w / total for w in weights])
        self.max_len, self.batch_size, self.seed = max_len, batch_size, seed
        self.rank, self.world_size, self.workers = rank, world_size, max(num_workers, 1)
        self.shuffle_buffer, self.start_batch = shuffle_buffer, start_batch
        self.collate = collate  # a task's batcher (fine-tuning); default: image + one caption

    def slot_shards(self, source: Source, worker: int) -> list[Shard]:
        slots = self.world_size * self.workers
        slot = self.rank * self.workers + worker
        return [s for i, s in enumerate(source.shards) if i % slots == slot]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        loader_worker = info.id if info is not None else 0
        # DataLoader always asks its worker 0 first; when resuming at batch b, that batch belongs to
        # stream worker b % W, so loader worker w plays stream worker (w + b) % W.
        shift = self.start_batch % self.workers
        worker = (loader_worker + shift) % self.workers
        done = self.start_batch // self.workers + (1 if worker < shift else 0)
        samples = self._samples(worker, start=done * self.batch_size)
        while True:
            yield self._collate([next(samples) for _ in range(self.batch_size)])

    def _dataset_choices(self, worker: int, start: int) -> tuple[Iterator[int], list[int]]:
        """The data set of each slot position from `start` on, and how many each gave before `start`."""
        n_sources = len(self.sources)
        if n_sources == 1:
            return iter(lambda: 0, None), [start]
        if len({src.media for src in self.sources}) > 1:
            return _replay_blocks(self._media_block(worker), self.batch_size, start, n_sources)

        def block(b: int) -> np.ndarray:
            rng = _numpy_rng("scl-mix", self.seed, self.rank, worker, b)
            return rng.choice(n_sources, size=_MIX_BLOCK, p=self.probabilities)

        return _replay_blocks(block, _MIX_BLOCK, start, n_sources)

    def _media_block(self, worker: int) -> Callable[[int], np.ndarray]:
        """Data sets of batch b of this slot, one media kind per batch: the batch draws its kind, then
        a data set of that kind per sample, from a generator seeded by (seed, worker, b)."""
        kinds = sorted({src.media for src in self.sources})
        members = {k: np.array([i for i, src in enumerate(self.sources) if src.media == k]) for k in kinds}
        kind_p = np.array([sum(self.weights[i] for i in members[k]) for k in kinds])
        kind_p = kind_p / kind_p.sum()

        def batch(b: int) -> np.ndarray:
            # Not seeded by rank: every process draws the same media at the same step, so DDP
            # never pairs an image step with a clip step.
            rng = _numpy_rng("scl-media", self.seed, worker, b)
            kind = kinds[int(rng.choice(len(kinds), p=kind_p))]
            weights = np.array([self.weights[i] for i in members[kind]])
            return members[kind][rng.choice(len(weights), size=self.batch_size, p=weights / weights.sum())]

        return batch

    def _samples(self, worker: int, start: int) -> Iterator[tuple[dict[str, Any], int, random.Random]]:
        """(raw sample, global index, the sample's own generator) for slot positions `start`, `start`+1, ..."""
        choices, consumed = self._dataset_choices(worker, start)
        streams = [
            _SlotReader(
                self.slot_shards(src, worker), self.seed, i, self.rank, worker, self.shuffle_buffer
            ).samples(consumed[i])
            for i, src in enumerate(self.sources)
        ]
        position = start
        for source in choices:
            sample, index = next(streams[source])
            yield sample, index, random.Random(f"scl-sample/{self.seed}/{self.rank}/{worker}/{position}")
            position += 1

    def _collate(self, items: list[tuple[dict[str, Any], int, random.Random]]) -> dict[str, torch.Tensor]:
        if self.collate is not None:
            return self.collate(items)
        captions, pixels, indices = [], [], []
        for sample, index, rng in items:
            captions.append(rng.choice(_captions(sample)))
            pixels.append(sample_pixels(sample, self.transform, rng, self.num_frames))
            indices.append(index)
        text_ids, text_mask = self.tokenizer.encode(captions, self.max_len)
        if len({p.shape[0] for p in pixels}) > 1:
            raise DataError(f"{_where(items[0][0])}: a batch mixes images and clips — give each data set "
                            "its media in the manifest ('media')")  # fmt: skip
        return {
            "images": torch.stack(pixels),
            "text_ids": text_ids,
            "text_mask": text_mask,
            "index": torch.tensor(indices, dtype=torch.long),
        }


def _where(sample: dict[str, Any]) -> str:
    return f"sample {sample.get('__key__')}"


def _captions(sample: dict[str, Any]) -> list[str]:
    try:
        captions = json.loads(sample["json"])["captions"]
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"{_where(sample)}: no readable 'captions' in its .json ({err})") from err
    if not captions:
        raise DataError(f"{_where(sample)}: empty caption list")
    return captions


def sample_pixels(
    sample: dict[str, Any], transform: ImageTransform, rng: random.Random | None, num_frames: int
) -> torch.Tensor:
    """uint8 [T, 3, S, S] of a shard sample: a clip member (mp4, ...) decoded to `num_frames`
    frames, else its image as one frame. `DataError` naming the sample for an unreadable clip."""
    for name, data in sample.items():
        if isinstance(data, bytes) and is_video_member(name):
            try:
                return decode_clip(data, num_frames, transform, rng)
            except VideoError as err:
                raise DataError(f"{_where(sample)}: {err}") from err
    return transform.from_bytes(_image_bytes(sample), rng).unsqueeze(0)


def _image_bytes(sample: dict[str, Any]) -> bytes:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext]
    raise DataError(f"{_where(sample)}: no image ({'/'.join(IMAGE_EXTENSIONS)}) member")


def check_slots(
    sources: list[Source], world_size: int, num_workers: int, split: str, data_root: Path
) -> None:
    """Every (rank, worker) slot must own at least one non-empty shard of every data set; else a
    `DataError` naming the manifest and the fix. Cheap (manifest counts only): run it before
    starting processes."""
    workers = max(num_workers, 1)
    slots = world_size * workers
    for src in sources:
        where = Path(data_root) / src.name / MANIFEST
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


def source_media(data_root: Path, datasets: list[str], split: str, group: str = "splits") -> set[str]:
    """The media kinds ("image", "video") the data sets' `split` holds."""
    return {src.media for src in load_sources(data_root, datasets, split, group)}


def check_pretrain_data(
    data_root: Path, datasets: list[str], split: str, world_size: int, num_workers: int
) -> None:
    """What `build_pretrain_loader` checks first, for all ranks at once (manifests and shard files)."""
    check_slots(load_sources(data_root, datasets, split), world_size, num_workers, split, data_root)


def build_pretrain_loader(
    data_root: Path,
    datasets: list[str],
    weights: list[float] | None,
    split: str,
    tokenizer: TextTokenizer,
    image_size: int,
    max_len: int,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 2,
    shuffle_buffer: int = 1000,
    augment: bool = True,
    crop_min_scale: float = 0.5,
    start_batch: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    collate: Callable | None = None,
    group: str = "splits",
    num_frames: int = 4,
) -> DataLoader:
    """Endless batches of this rank (see `PretrainStream` for the keys and shapes).

    The same arguments give the same batches for a given `num_workers`; `start_batch=b` gives
    exactly the uninterrupted stream from its b-th batch on. Data sets are mixed per sample by
    `weights` (default: proportional to their sample counts). Raises `DataError` for a missing
    data set, manifest, split or shard, or too few shards for the rank x worker slots.
    """
    if not datasets:
        raise UsageError("data.train names no data set")
    if batch_size < 1 or start_batch < 0 or shuffle_buffer < 1:
        raise UsageError(f"batch_size, shuffle_buffer must be >= 1 and start_batch >= 0 (got {batch_size}, "
                         f"{shuffle_buffer}, {start_batch})")  # fmt: skip
    sources = load_sources(data_root, datasets, split, group)
    if weights is None:
        weights = [float(src.samples) for src in sources]
    if len(weights) != len(sources) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UsageError(
            f"data.weights {weights}: need one non-negative weight per data set ({len(sources)}), not all 0"
        )
    stream = PretrainStream(
        sources, list(weights), tokenizer, ImageTransform(image_size, augment, crop_min_scale),
        max_len, batch_size, seed, rank, world_size, num_workers, shuffle_buffer, start_batch, collate,
        num_frames,
    )  # fmt: skip
    check_slots(sources, world_size, num_workers, split, data_root)
    if num_workers > 0:
        # Tokenizing happens in forked workers; the tokenizers thread pool must not be inherited.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )
