"""SIGTERM, what SLURM and cloud schedulers send before they stop or preempt a job: every rank
finishes the step it is in, the run writes one checkpoint, and every process exits 0, so that the
requeued job continues exactly with `--resume`.

- `StopRequest.install()` (before the loader starts its workers, which inherit it) makes SIGTERM
  only set a flag in this process. Under `scl`'s launcher (`SCL_CONTROL_DIR` set) a file `stop` in
  that folder means the same: the launcher writes it when it gets SIGTERM itself, since torchrun,
  started by it, ignores SIGTERM (see `training.launch`).
- After each step every rank calls `agreed()`: the ranks' flags are combined by one all-reduce
  (MAX) of one int over a CPU (gloo) group, so all stop after the same step even when the signal
  reached them at different times; on the host only, so it never waits for the device.
- `stopped(step)` leaves `stopped-RANK` in the control folder once the checkpoint is complete: the
  launcher exits 0 when every rank of its node did.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import torch

from scl_cli.io.atomic import atomic_write_text

CONTROL_ENV = "SCL_CONTROL_DIR"  # the launcher's folder for this node: `stop`, `stopped-RANK`
STOP_FILE = "stop"


def control_dir() -> Path | None:
    folder = os.environ.get(CONTROL_ENV)
    return Path(folder) if folder else None


class StopRequest:
    def __init__(self, rank: int = 0, distributed: bool = False) -> None:
        self.rank, self.distributed = rank, distributed
        self.requested = False
        self._previous: Any = None
        self._group: Any = None
        self._control = control_dir()

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        if self.distributed:
            import torch.distributed as dist

            # The flags travel on the host: a gloo group beside an NCCL default group.
            self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return self

    def uninstall(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True

    def _local(self) -> bool:
        if not self.requested and self._control is not None and (self._control / STOP_FILE).exists():
            self.requested = True
        return self.requested

    def agreed(self) -> bool:
        """Whether any rank was asked to stop (a collective in distributed runs: call it on every
        rank after every step)."""
        local = self._local()
        if not self.distributed:
            return local
        import torch.distributed as dist

        flag = torch.tensor([int(local)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def stopped(self, step: int) -> None:
        """Tell the launcher that this rank stopped cleanly after `step` (its checkpoint complete)."""
        if self._control is not None and self._control.is_dir():
            atomic_write_text(self._control / f"stopped-{self.rank}", f"{step}\n")
