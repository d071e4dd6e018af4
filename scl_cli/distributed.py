"""Thin helpers over torch.distributed that also work, as identities, in a single process.

Gradient contract (used by every loss): each rank computes its loss from its local samples
against features gathered from all ranks with `gather_with_grad`, whose backward sums the
gradients of every rank into the owner's local slice. DDP then averages parameter gradients over
ranks. So a loss built as `global_mean(local_total, local_count)` makes the trained gradient that
of `sum of all ranks' totals / global count`, exactly what one process with the whole batch gets.

`gather_local_grad` is the paper's code's all-gather (`AllGather_multi` in IIGROUP/SCL
`scl/modules/dist_utils.py`): its backward keeps only this rank's slice of the incoming gradient
and drops what the other ranks' losses sent. Every rank computes the same loss over the gathered
batch, so after DDP's average the features receive 1/world of that loss's gradient (parameters
used directly by the loss, such as a temperature, still get all of it). The objectives use it
when their recipe says `gather = "paper"`.
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


def _communicates(x: Tensor) -> bool:
    """True in a process group of 2+; meta tensors (shape-only dry runs) never communicate."""
    return is_dist() and dist.get_world_size() > 1 and x.device.type != "meta"


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' `x` concatenated along dim 0 (`[world * B, ...]`), rank order.

    Every rank's slice stays differentiable: the backward sums the gradients from all ranks into
    the local `x`. All ranks must pass the same shape. Identity in one process.
    """
    if not _communicates(x):
        return x
    return _all_gather_autograd(x.contiguous())


class _GatherLocalGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, x.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_local_grad(x: Tensor) -> Tensor:
    """All ranks' `x` concatenated along dim 0, like `gather_with_grad`, but the backward passes only
    this rank's slice of the gradient of this rank's loss: the paper's code's all-gather (see the
    module docstring for what that trains). Identity in one process."""
    if not _communicates(x):
        return x
    return _GatherLocalGrad.apply(x)


def gather_no_grad(x: Tensor) -> Tensor:
    """All ranks' `x` concatenated along dim 0, outside autograd (for choices, not for losses)."""
    if not _communicates(x):
        return x.detach()
    out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, x.detach().contiguous())
    return out


def rows_of_global_batch(x: Tensor, index: Tensor, plan: Tensor | None = None) -> Tensor:
    """Rows `index` [B] of the global batch (all ranks' `x` [B, ...] stacked in rank order).

    Differentiable for every rank's `x`. With `plan` (a CPU tensor [world * B]: the global row
    wanted by every row of the global batch, the same on every rank; `index` is this rank's
    slice of it), only the needed rows travel, in one all-to-all whose sizes are known on the
    host: O(B) traffic whatever the world size, and no host-device sync. Without it the whole
    batch is all-gathered (O(world * B)). In one process: `x.index_select(0, index)`.
    """
    if not _communicates(x):
        return x.index_select(0, index)
    if plan is None:
        return gather_with_grad(x).index_select(0, index)
    world, rank, local = dist.get_world_size(), dist.get_rank(), x.shape[0]
    if plan.numel() != world * local:
        raise ValueError(f"plan covers {plan.numel()} rows, the global batch has {world * local}")
    wanted = plan.view(world, local)
    # Sent: for each destination in rank order, the rows of ours it wants, in its order.
    ours = wanted // local == rank
    send = (wanted - rank * local)[ours]
    # Received: grouped by source rank; `back` puts every row in its place again.
    source = wanted[rank] // local
    back = source.argsort(stable=True).argsort()
    device = x.device
    outgoing = x.index_select(0, send.to(device, non_blocking=True)).contiguous()
    received = _all_to_all_autograd(
        outgoing, torch.bincount(source, minlength=world).tolist(), ours.sum(1).tolist()
    )
    return received.index_select(0, back.to(device, non_blocking=True))


def _all_gather_autograd(x: Tensor) -> Tensor:
    from torch.distributed import _functional_collectives as fc

    gather = getattr(fc, "all_gather_single_autograd", None) or fc.all_gather_tensor_autograd
    # wait_tensor: a plain tensor (not a lazy AsyncCollectiveTensor), still differentiable; on
    # NCCL it orders the stream, it does not block the host.
    return fc.wait_tensor(gather(x, 0, dist.group.WORLD))


def _all_to_all_autograd(x: Tensor, output_sizes: list[int], input_sizes: list[int]) -> Tensor:
    from torch.distributed import _functional_collectives as fc

    return fc.wait_tensor(fc.all_to_all_single_autograd(x, output_sizes, input_sizes, dist.group.WORLD))


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of `x` over ranks, outside autograd; `x` itself in one process."""
    if not _communicates(x):
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


_LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo/transport",
              "NCCL communicator", "NCCL error", "Timed out waiting", "timed out", "Socket Timeout",
              "ProcessGroupGloo", "DistNetworkError", "DistBackendError")  # fmt: skip


def is_communication_error(err: BaseException) -> bool:
    """True for the errors a collective raises when another process of the group is gone (its node
    died or was killed, the network failed) or did not answer within the collective timeout."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    text = f"{type(err).__name__}: {err}"
    return any(marker in text for marker in _LOST_PEER)


def barrier() -> None:
    """Wait for every rank; nothing in one process."""
    if is_dist():
        dist.barrier()
