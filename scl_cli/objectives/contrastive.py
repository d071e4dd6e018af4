"""The symmetric normalised-softmax loss every contrastive objective uses (DESIGN §1.2).

    L = -mean_i log softmax(S / t)_ii - mean_j log softmax(S^T / t)_jj,   S = a b^T

Across processes both sides are all-gathered with gradients; each process scores its own rows
against every gathered column (the open_clip "local loss"), so after DDP averages gradients the
result equals the single-process loss over the global batch.

`extra_b` adds candidates that only `a` scores (hard negatives no row of `a` matches, such as
time-reversed clips for their captions): L's first term then normalises over [S, a extra^T].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scl_cli.distributed import dist_info, gather_with_grad, global_mean


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Softmax over many candidates loses precision in 16-bit; keep float64 when given it."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def symmetric_contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: torch.Tensor | float,
    valid: torch.Tensor | None = None,
    extra_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """a, b: [n, d] unit-norm rows, row i of `a` matches row i of `b`; `valid` [n] bool marks rows
    that take part (padding rows are neither queries nor candidates); `extra_b` [n, d]: negatives
    for the rows of `a` only. Returns a scalar."""
    a_all, b_all = gather_with_grad(a), gather_with_grad(b)
    labels = torch.arange(a.shape[0], device=a.device) + dist_info().rank * a.shape[0]
    candidates = b_all if extra_b is None else torch.cat([b_all, gather_with_grad(extra_b)])
    logits_ab = a @ candidates.t() / temperature
    logits_ba = b @ a_all.t() / temperature
    if valid is None:
        return F.cross_entropy(at_least_fp32(logits_ab), labels) + F.cross_entropy(
            at_least_fp32(logits_ba), labels
        )
    valid_all = gather_with_grad(valid.to(a.dtype)).bool()
    logits_ab, logits_ba = at_least_fp32(logits_ab), at_least_fp32(logits_ba)
    fill = torch.finfo(logits_ab.dtype).min
    valid_candidates = valid_all if extra_b is None else torch.cat([valid_all, valid_all])
    logits_ab = logits_ab.masked_fill(~valid_candidates[None, :], fill)
    logits_ba = logits_ba.masked_fill(~valid_all[None, :], fill)
    per_row = F.cross_entropy(logits_ab, labels, reduction="none") + F.cross_entropy(
        logits_ba, labels, reduction="none"
    )
    # where, not a product: an invalid row's own label is masked, so its loss is huge, and huge * 0 = nan.
    per_row = torch.where(valid, per_row, torch.zeros_like(per_row))
    return global_mean(per_row.sum(), valid.sum())
