"""The symmetric normalised-softmax loss every contrastive objective uses (DESIGN §1.2).

    L = -mean_i log softmax(S / t)_ii - mean_j log softmax(S^T / t)_jj,   S = a b^T

Across processes (`gather`):
- "global" (scl): both sides are all-gathered with gradients; each process scores its own rows
  against every gathered column (the open_clip "local loss"), so after DDP averages gradients the
  result equals the single-process loss over the global batch.
- "paper" (the released code): both sides are gathered with `gather_local_grad` and every process
  computes the whole loss over the gathered batch; its features then train at 1/world of the
  loss's weight (a temperature at full weight).
- "local": no gathering; each process's loss over its own rows only (the released code's global
  SCL text term and local SCL image term).
All three are the same loss in one process.

`extra_b` adds candidates that only `a` scores (hard negatives no row of `a` matches, such as
time-reversed clips for their captions): L's first term then normalises over [S, a extra^T].

Precision: S and the softmax over it are computed in (at least) fp32 with autocast off, whatever
the step's autocast. At temperature 0.03 a logit is 33 x a cosine, and a bf16 matmul output keeps
8 significant bits: logits near 33 would be rounded to steps of 0.25, about the size of the
differences the loss has to learn from (fp16: steps of 0.03). The products are tiny ([n, n] with
n the gathered batch or its masked tokens), so fp32 costs nothing measurable.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F

from scl_cli.distributed import dist_info, gather_local_grad, gather_no_grad, gather_with_grad, global_mean

Gather = Literal["global", "paper", "local"]


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Softmax over many candidates loses precision in 16-bit; keep float64 when given it."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows of x [..., d] scaled to unit L2 norm, in at least fp32: the features a contrastive
    loss compares (CUDA autocast normalises in fp32 anyway; CPU autocast would keep bf16)."""
    return F.normalize(at_least_fp32(x), dim=-1)


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Turn autocast off for `device_type` (a no-op for devices autocast does not know: meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def similarity(a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """a [n, d] @ b [m, d]^T / temperature -> [n, m] logits in at least fp32, autocast off (see
    the module docstring for why)."""
    with autocast_off(a.device.type):
        return at_least_fp32(a) @ at_least_fp32(b).t() / temperature


def symmetric_contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: torch.Tensor | float,
    valid: torch.Tensor | None = None,
    extra_b: torch.Tensor | None = None,
    gather: Gather = "global",
) -> torch.Tensor:
    """a, b: [n, d] unit-norm rows, row i of `a` matches row i of `b`; `valid` [n] bool marks rows
    that take part (padding rows are neither queries nor candidates); `extra_b` [n, d]: negatives
    for the rows of `a` only; `gather`: see the module docstring. Returns a scalar."""
    if gather == "paper":
        a, b = gather_local_grad(a), gather_local_grad(b)
        extra_b = None if extra_b is None else gather_local_grad(extra_b)
        valid = None if valid is None else gather_no_grad(valid.to(a.dtype)).bool()
        return _whole_set_loss(a, b, temperature, valid, extra_b)
    if gather == "local":
        return _whole_set_loss(a, b, temperature, valid, extra_b)
    if gather != "global":
        raise ValueError(f"unknown gather {gather!r}; expected 'global', 'paper' or 'local'")
    a_all, b_all = gather_with_grad(a), gather_with_grad(b)
    labels = torch.arange(a.shape[0], device=a.device) + dist_info().rank * a.shape[0]
    candidates = b_all if extra_b is None else torch.cat([b_all, gather_with_grad(extra_b)])
    logits_ab = similarity(a, candidates, temperature)
    logits_ba = similarity(b, a_all, temperature)
    if valid is None:
        return F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels)
    valid_all = gather_with_grad(valid.to(a.dtype)).bool()
    per_row = _masked_rows(logits_ab, logits_ba, labels, valid, valid_all, extra_b is not None)
    return global_mean(per_row.sum(), valid.sum())


def _whole_set_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: torch.Tensor | float,
    valid: torch.Tensor | None,
    extra_b: torch.Tensor | None,
) -> torch.Tensor:
    """The loss over every (valid) row of a and b as given: no communication, no share-out."""
    labels = torch.arange(a.shape[0], device=a.device)
    candidates = b if extra_b is None else torch.cat([b, extra_b])
    logits_ab = similarity(a, candidates, temperature)
    logits_ba = similarity(b, a, temperature)
    if valid is None:
        return F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels)
    per_row = _masked_rows(logits_ab, logits_ba, labels, valid, valid, extra_b is not None)
    return per_row.sum() / valid.sum().clamp(min=1).to(per_row.dtype)


def _masked_rows(
    logits_ab: torch.Tensor,
    logits_ba: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    valid_all: torch.Tensor,
    has_extra: bool,
) -> torch.Tensor:
    """Per-row loss [n] with invalid candidates masked out and invalid rows zero."""
    logits_ab, logits_ba = at_least_fp32(logits_ab), at_least_fp32(logits_ba)
    fill = torch.finfo(logits_ab.dtype).min
    valid_candidates = torch.cat([valid_all, valid_all]) if has_extra else valid_all
    logits_ab = logits_ab.masked_fill(~valid_candidates[None, :], fill)
    logits_ba = logits_ba.masked_fill(~valid_all[None, :], fill)
    per_row = F.cross_entropy(logits_ab, labels, reduction="none") + F.cross_entropy(
        logits_ba, labels, reduction="none"
    )
    # where, not a product: an invalid row's own label is masked, so its loss is huge, and huge * 0 = nan.
    return torch.where(valid, per_row, torch.zeros_like(per_row))


def order_loss(
    forward: torch.Tensor, backward: torch.Tensor, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-order term: mean over rows (those `keep` marks, if given) of -log softmax([f, b])[0] =
    softplus(b - f), for scores [B] of a caption on its clip (f) and on that clip played backwards
    (b); and the share of those rows whose clip scores higher (detached)."""
    forward, backward = at_least_fp32(forward), at_least_fp32(backward)
    loss, right = F.softplus(backward - forward), (forward > backward).to(forward.dtype)
    if keep is None:
        return loss.mean(), right.mean().detach()
    count = keep.sum().clamp(min=1)
    return torch.where(keep, loss, 0.0).sum() / count, (torch.where(keep, right, 0.0).sum() / count).detach()
