"""Deterministic, resumable sample order for one (rank, worker) slot: a bounded shuffle over sample
positions known from the manifest, and the seeded choice of data set per position.

Shard arithmetic (cf. open_clip's `ResampledShards2`/`detshuffle2`, spelled out here):
- slots: `world_size * W` (rank, worker) pairs, `W = max(num_workers, 1)`; shard i of each
  data set belongs to slot `i % slots`. Every slot loops over its shards epoch after epoch.
- one epoch of a slot: its shards in an order seeded by (seed, data set, rank, worker, epoch),
  read sequentially through a bounded shuffle buffer seeded the same way. The buffer is run on
  sample *positions* computed from the manifest counts, so the epoch's order is known before
  any byte is read, no sample repeats within it, and resuming mid-epoch skips shards unread.
- mixing: the data set of a slot's p-th sample is a weighted draw seeded by (seed, rank,
  worker, p); nothing depends on history, so resuming needs no replay.
"""

from __future__ import annotations

import hashlib
import random
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from scl_cli.data.collate import ERROR_KEY
from scl_cli.data.manifests import Shard
from scl_cli.data.shard_cache import ShardReading
from scl_cli.data.shards import MANIFEST, iter_tar_samples
from scl_cli.errors import DataError
from scl_cli.io import remote

MIX_BLOCK = 4096  # data set choices are drawn this many positions at a time


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


def numpy_rng(*parts: object) -> np.random.Generator:
    text = "/".join(str(p) for p in parts)
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "little"))


def replay_blocks(
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


class SlotReader:
    """Endless raw samples of one data set for one (rank, worker) slot, resumable at any count."""

    def __init__(
        self, shards: list[Shard], seed: int, source: int, rank: int, worker: int, buffer: int,
        reading: ShardReading | None = None,
    ) -> None:  # fmt: skip
        self.shards = shards
        self.reading = reading  # how shards behind URLs are read (retries, cache)
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
        inputs = self._read_from(shards, min(remaining), self.reading)
        held: dict[int, tuple[dict[str, Any], int]] = {}
        for position in remaining:
            while position not in held:
                got, sample, index = next(inputs)
                if not already[got]:  # samples emitted before a resume point are read past, not kept
                    held[got] = (sample, index)
            yield held.pop(position)

    @staticmethod
    def _read_from(
        shards: list[Shard], first: int, reading: ShardReading | None = None
    ) -> Iterator[tuple[int, dict[str, Any], int]]:
        """(epoch position, raw sample, global index) in reading order, from position `first`.

        A shard that ends early (truncated) or breaks mid-way (a damaged tar) gives, for each sample
        it lost, a placeholder `{"__key__", "__error__": "truncated_shard"}` in its place: the
        positions stay where the manifest put them, and the batcher skips the placeholders. A shard
        behind a URL that cannot be read even after the retries does the same with
        "unreadable_shard"."""
        start = 0
        for shard in shards:
            end = start + shard.samples
            if end > first:
                count = max(0, first - start)
                reason = "truncated_shard"
                try:
                    for sample in iter_tar_samples(shard.path, count, reading, shard.sha256):
                        if count == shard.samples:
                            raise _count_mismatch(shard)
                        yield start + count, sample, shard.first_index + count
                        count += 1
                except remote.RemoteError:
                    reason = "unreadable_shard"  # after its retries: the rest of the shard is lost
                except (tarfile.TarError, OSError, EOFError):
                    pass  # the rest of this shard is lost; its positions become placeholders
                while count < shard.samples:
                    lost = {"__key__": f"{remote.basename(shard.path)}#{count}", ERROR_KEY: reason}
                    yield start + count, lost, shard.first_index + count
                    count += 1
            start = end


def _count_mismatch(shard: Shard) -> DataError:
    return DataError(
        f"{shard.path}: holds a different number of samples than {MANIFEST} says ({shard.samples}) "
        "— prepare the data set again"
    )
