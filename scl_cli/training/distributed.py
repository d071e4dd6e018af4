"""Thin helpers over torch.distributed that also work, as identities, in a single process.

Gradient contract (used by every loss): each rank computes its loss from its local samples
against features gathered from all ranks with `gather_with_grad`, whose backward sums the
gradients of every rank into the owner's local slice. DDP then averages parameter gradients over
ranks. So a loss built as `global_mean(local_total, local_count)` makes the trained gradient that
of `sum of all ranks' totals / global count`, exactly what one process with the whole batch gets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, number of processes, rank on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, metrics and reports."""
        return self.rank == 0


def is_dist() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def dist_info() -> DistInfo:
    """From the process group when initialised, else from torchrun's RANK/WORLD_SIZE/LOCAL_RANK."""
    if is_dist():
        rank = dist.get_rank()
        return DistInfo(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
    return DistInfo(
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' `x` concatenated along dim 0 (`[world * B, ...]`), rank order.

    Every rank's slice stays differentiable: the backward sums the gradients from all ranks into
    the local `x`. All ranks must pass the same shape. Identity in one process.
    """
    if not is_dist() or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of `x` over ranks, outside autograd; `x` itself in one process."""
    if not is_dist():
        return x
    summed = x.detach().clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed


def global_mean(total: Tensor, count: Tensor) -> Tensor:
    """The local share of a mean over all ranks: `total * world / sum over ranks of count`.

    `total` is this rank's sum of per-item losses (with gradient), `count` its number of items.
    After DDP averages gradients over ranks, the result trains as `sum of totals / global count`.
    The value on one rank is not the global mean (log `logged_mean` for that); in one process it
    is `total / count`. A global count of 0 gives 0, not NaN. No host synchronisation.
    """
    global_count = all_reduce_sum(count.detach()).to(total.dtype).clamp(min=1)
    return total * world_size() / global_count


def logged_mean(total: Tensor, count: Tensor) -> Tensor:
    """The global mean `sum of totals / sum of counts` for logging (no gradient, same on all ranks)."""
    return all_reduce_sum(total.detach()) / all_reduce_sum(count.detach()).to(total.dtype).clamp(min=1)


def barrier() -> None:
    """Wait for every rank; nothing in one process."""
    if is_dist():
        dist.barrier()
