"""Undecodable samples during training, seen from the process that trains: counted per reason,
remembered per stream worker and data set (what a resumed stream must skip again to continue
exactly, see `data.stream`), and the share of samples that stops a run.

`SkipCounter` wraps the loader's batch iterator: it takes the `skipped` and `skipped_by_source`
counts off every batch (host tensors: reading them costs no device sync) before the batch goes to
the device. Batch b of the stream was built by stream worker b % W. It also sums the batches'
`read_retries` (retried reads of shards behind URLs), logged as `read_retries`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from scl_cli.data.collate import SKIP_REASONS
from scl_cli.errors import TrainingError

MIN_EVIDENCE = 10  # skipped samples before the share can stop a run


class SkipCounter:
    def __init__(self, batches: Iterator[dict[str, torch.Tensor]], workers: int, sources: list[str],
                 batch_size: int, start_batch: int = 0, state: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.batches = batches
        self.workers = max(workers, 1)
        self.sources = list(sources)
        self.batch_size = batch_size
        self.batch_number = start_batch
        state = state or {}
        self.extra: list[list[int]] = [list(map(int, row)) for row in state.get("extra", [])] or [
            [0] * len(self.sources) for _ in range(self.workers)
        ]
        self.counts: dict[str, int] = {r: int((state.get("counts") or {}).get(r, 0)) for r in SKIP_REASONS}
        self.by_source: dict[str, int] = {
            s: int((state.get("by_source") or {}).get(s, 0)) for s in self.sources
        }
        self.read = int(state.get("read", 0))
        self.retries = int(state.get("retries", 0))  # this process's retried remote reads
        self.retries_total = self.retries  # every process's, as of the last `totals`

    def __iter__(self) -> SkipCounter:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self.batches)
        skipped = batch.pop("skipped", None)
        by_source = batch.pop("skipped_by_source", None)
        retries = batch.pop("read_retries", None)
        if retries is not None:
            self.retries += int(retries.sum())
        extra = 0
        if skipped is not None and by_source is not None:
            row = self.extra[self.batch_number % self.workers]
            for i, n in enumerate(by_source.tolist()):
                row[i] += n
                self.by_source[self.sources[i]] += n
            for reason, n in zip(SKIP_REASONS, skipped.tolist(), strict=True):
                self.counts[reason] += n
                extra += n
        self.read += self.batch_size + extra
        self.batch_number += 1
        return batch

    def close(self) -> None:
        shutdown = getattr(self.batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def state_dict(self) -> dict[str, Any]:
        """This process's part of the training state (plain values)."""
        return {"extra": [list(row) for row in self.extra], "counts": dict(self.counts),
                "by_source": dict(self.by_source), "read": self.read, "retries": self.retries}  # fmt: skip

    def totals(
        self, device: torch.device | None = None, distributed: bool = False
    ) -> tuple[int, dict[str, int]]:
        """(samples read, skips per reason) of every process (a collective when `distributed`); the
        processes' retried remote reads land in `retries_total`."""
        values = [self.read, self.retries, *(self.counts[r] for r in SKIP_REASONS)]
        if distributed:
            import torch.distributed as dist

            summed = torch.tensor(values, dtype=torch.float64, device=device)
            dist.all_reduce(summed)
            values = [int(v) for v in summed.tolist()]
        self.retries_total = values[1]
        return values[0], dict(zip(SKIP_REASONS, values[2:], strict=True))

    def metrics(self, read: int, counts: dict[str, int]) -> dict[str, float]:
        """`samples_skipped` (and per reason) when any was, `read_retries` when any read was retried."""
        skipped = sum(counts.values())
        out = {"samples_skipped": float(skipped)} if skipped else {}
        out.update({f"samples_skipped/{r}": float(n) for r, n in counts.items() if n})
        if self.retries_total:
            out["read_retries"] = float(self.retries_total)
        return out

    def check(self, read: int, counts: dict[str, int], threshold: float) -> None:
        """`TrainingError` when more than `threshold` of the samples read were skipped, judged once
        `MIN_EVIDENCE` samples were skipped (so that one bad sample in the first batch stops nothing)."""
        skipped = sum(counts.values())
        if (threshold > 0 and skipped < MIN_EVIDENCE) or skipped <= threshold * read:
            return
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n)
        sets = ", ".join(f"{s} {n}" for s, n in self.by_source.items() if n)
        raise TrainingError(
            f"{skipped} of {read} samples read ({skipped / read:.1%}) could not be decoded ({reasons}; "
            f"this process: {sets or 'none'}), more than data.max_bad_samples = {threshold:g} — check the "
            "data set (scl prepare it again, or verify its shards), or raise data.max_bad_samples"
        )
