"""The training loader: an endless, deterministic, resumable stream of image-caption batches.

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
- a sample that cannot be decoded (`collate.BadSample`: corrupt image, unreadable clip, a member
  a truncated shard lost) is skipped and replaced by the next sample *of the same data set*, so
  batch positions keep their data set (and media). Each batch carries `skipped` (counts per
  reason, `collate.SKIP_REASONS`) and `skipped_by_source` (extra samples each data set's reader
  gave); the trainer sums the latter per stream worker (`data.skips`) and a resumed stream starts
  each reader that many samples further (`start_skipped`), so resuming stays exact.
- shards behind a URL are streamed with retries (`data.shard_cache.ShardReading`, optionally
  through a local cache); each batch carries `read_retries` [1], the retries its worker made while
  building it, and a shard still unreadable after them is skipped like a truncated one
  ("unreadable_shard"). The bytes, and so the batches, are those of the same shards on disk.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from scl_cli.data.collate import SKIP_REASONS, BadSample, Batcher, CaptionBatch, Item
from scl_cli.data.manifests import Shard, Source, check_slots, load_sources
from scl_cli.data.sampling import MIX_BLOCK, SlotReader, numpy_rng, replay_blocks
from scl_cli.data.shard_cache import ShardReading
from scl_cli.data.tokenizer import TextTokenizer
from scl_cli.data.transforms import ImageTransform
from scl_cli.errors import DataError, UsageError
from scl_cli.io.remote import retry_count


class TrainStream(IterableDataset):
    """Endless batches for one rank: `images` uint8 [B, T, 3, H, W] (pixels; the step normalises
    them on its device, see `transforms.to_model_input` — a quarter of float32's bytes through the
    worker queue and the host-device copy), `text_ids` int64 [B, L], `text_mask` int64 [B, L]
    (1 = real token), `index` int64 [B] (global sample index), `skipped` int64 [len(SKIP_REASONS)]
    and `skipped_by_source` int64 [data sets] (undecodable samples this batch skipped; the trainer
    takes them off, `data.skips`), `read_retries` int64 [1] (retried reads of shards behind URLs).

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
        collate: Callable[[list[Item]], dict[str, torch.Tensor]] | None = None,
        num_frames: int = 4,
        start_skipped: list[list[int]] | None = None,
        reading: ShardReading | None = None,
        pad_to_multiple: int = 0,
    ) -> None:
        self.sources, self.tokenizer, self.transform = sources, tokenizer, transform
        self.pad_to_multiple = pad_to_multiple
        self.reading = reading
        self.num_frames = num_frames
        total = float(sum(weights))
        self.weights = [float(w) for w in weights]
        self.probabilities = np.array([w / total for w in weights])
        self.max_len, self.batch_size, self.seed = max_len, batch_size, seed
        self.rank, self.world_size, self.workers = rank, world_size, max(num_workers, 1)
        self.shuffle_buffer, self.start_batch = shuffle_buffer, start_batch
        self.collate = collate  # a task's batcher (fine-tuning); default: image + one caption
        # Extra samples each (stream worker, data set) reader gave for skipped ones before start_batch.
        self.start_skipped = start_skipped or [[0] * len(sources) for _ in range(self.workers)]

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
        batcher = self._batcher()
        if batcher is not None:
            yield from self._skipping_batches(batcher, worker, done * self.batch_size)
            return
        samples = self._samples(worker, start=done * self.batch_size)  # a plain collate: no skipping
        while True:
            yield self.collate([next(samples) for _ in range(self.batch_size)])

    def _batcher(self) -> Batcher | None:
        if self.collate is None:
            return CaptionBatch(
                self.tokenizer, self.transform, self.max_len, self.num_frames, self.pad_to_multiple
            )
        if hasattr(self.collate, "prepare") and hasattr(self.collate, "combine"):
            return self.collate
        return None

    def _skipping_batches(
        self, batcher: Batcher, worker: int, start: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        choices, readers = self._readers(worker, start, self.start_skipped[worker])
        # At most an epoch of bad samples in a row per data set, then the data set is unusable.
        limits = [sum(s.samples for s in self.slot_shards(src, worker)) for src in self.sources]
        position = start
        while True:
            retries = retry_count()
            prepared = []
            skipped = [0] * len(SKIP_REASONS)
            by_source = [0] * len(self.sources)
            for _ in range(self.batch_size):
                source = next(choices)
                rng_name = f"scl-sample/{self.seed}/{self.rank}/{worker}/{position}"
                for _ in range(limits[source] + 1):
                    sample, index = next(readers[source])
                    try:
                        prepared.append(batcher.prepare((sample, index, random.Random(rng_name))))
                        break
                    except BadSample as bad:
                        skipped[SKIP_REASONS.index(bad.reason)] += 1
                        by_source[source] += 1
                else:
                    raise DataError(f"{self.sources[source].name}: no sample of a whole epoch of rank "
                                    f"{self.rank}, worker {worker} could be decoded — prepare the data set again")  # fmt: skip
                position += 1
            batch = batcher.combine(prepared)
            batch["skipped"] = torch.tensor(skipped, dtype=torch.long)
            batch["skipped_by_source"] = torch.tensor(by_source, dtype=torch.long)
            batch["read_retries"] = torch.tensor([retry_count() - retries], dtype=torch.long)
            yield batch

    def _readers(self, worker: int, start: int, extra: list[int]) -> tuple[Iterator[int], list[Iterator]]:
        """The data set of each slot position from `start` on, and each data set's reader, started
        past what the positions before `start` and the `extra` samples (skipped ones' replacements)
        consumed."""
        choices, consumed = self._dataset_choices(worker, start)
        readers = [
            SlotReader(
                self.slot_shards(src, worker),
                self.seed,
                i,
                self.rank,
                worker,
                self.shuffle_buffer,
                self.reading,
            ).samples(consumed[i] + extra[i])
            for i, src in enumerate(self.sources)
        ]
        return choices, readers

    def _dataset_choices(self, worker: int, start: int) -> tuple[Iterator[int], list[int]]:
        """The data set of each slot position from `start` on, and how many each gave before `start`."""
        n_sources = len(self.sources)
        if n_sources == 1:
            return iter(lambda: 0, None), [start]
        if len({src.media for src in self.sources}) > 1:
            return replay_blocks(self._media_block(worker), self.batch_size, start, n_sources)

        def block(b: int) -> np.ndarray:
            rng = numpy_rng("scl-mix", self.seed, self.rank, worker, b)
            return rng.choice(n_sources, size=MIX_BLOCK, p=self.probabilities)

        return replay_blocks(block, MIX_BLOCK, start, n_sources)

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
            rng = numpy_rng("scl-media", self.seed, worker, b)
            kind = kinds[int(rng.choice(len(kinds), p=kind_p))]
            weights = np.array([self.weights[i] for i in members[kind]])
            return members[kind][rng.choice(len(weights), size=self.batch_size, p=weights / weights.sum())]

        return batch

    def _samples(self, worker: int, start: int) -> Iterator[tuple[dict[str, Any], int, random.Random]]:
        """(raw sample, global index, the sample's own generator) for slot positions `start`, `start`+1, ..."""
        choices, readers = self._readers(worker, start, [0] * len(self.sources))
        position = start
        for source in choices:
            sample, index = next(readers[source])
            yield sample, index, random.Random(f"scl-sample/{self.seed}/{self.rank}/{worker}/{position}")
            position += 1


def ignore_sigterm(worker_id: int) -> None:
    """In each loader worker: SIGTERM, which a scheduler sends to every process of a job it stops,
    is left to the training process (it finishes the step and writes a checkpoint first, see
    `training.preemption`); the worker ends when that process shuts the loader down or dies.
    (torch's own worker handler would exit, and the next batch would fail.)"""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_train_loader(
    data_root: Path | str,
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
    start_skipped: list[list[int]] | None = None,
    reading: ShardReading | None = None,
    pad_to_multiple: int = 0,
) -> DataLoader:
    """Endless batches of this rank (see `TrainStream` for the keys and shapes).

    The same arguments give the same batches for a given `num_workers`; `start_batch=b` gives
    exactly the uninterrupted stream from its b-th batch on (with `start_skipped`, the per stream
    worker and data set count of replacements for skipped samples before it: `data.skips`).
    `data_root` (or a data set's own location) may be a URL: `reading` says how its shards are
    read (retries, cache; default: `io.remote`'s policy, no cache). Data sets are mixed per sample by
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
    stream = TrainStream(
        sources, list(weights), tokenizer, ImageTransform(image_size, augment, crop_min_scale),
        max_len, batch_size, seed, rank, world_size, num_workers, shuffle_buffer, start_batch, collate,
        num_frames, start_skipped, reading, pad_to_multiple,
    )  # fmt: skip
    check_slots(sources, world_size, num_workers, split, data_root)
    if num_workers > 0:
        # Tokenizing happens in forked workers; the tokenizers thread pool must not be inherited.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=ignore_sigterm if num_workers > 0 else None,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )
