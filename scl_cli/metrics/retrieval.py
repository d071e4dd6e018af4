"""Image-text retrieval recall@k (COCO / Flickr30K protocol, several captions per image).

Text->image ("ir"): each text is a query; a hit when its own image is among the top-k images.
Image->text ("tr"): each image is a query; a hit when ANY of its texts is among the top-k texts.
All values are percentages; "r_mean" is the mean of the six recalls.

`retrieval_recall` takes a dense score matrix [n_images, n_texts] (torch or numpy), or anything
carrying ranked lists `i2t_index` [n_images, L] / `t2i_index` [n_texts, L] (the
`RetrievalScores` of `scl_cli.search.ranking`), which `recall_from_rankings` scores.
Ties between equal scores are broken as `torch.topk` breaks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

RECALL_KS = (1, 5, 10)
RECALL_KEYS = ("ir_r1", "ir_r5", "ir_r10", "tr_r1", "tr_r5", "tr_r10", "r_mean")


@runtime_checkable
class RankedLists(Protocol):
    """Best-first candidate lists: `i2t_index` [n_images, L] text indices per image and
    `t2i_index` [n_texts, L'] image indices per text (L, L' >= min(10, n))."""

    i2t_index: Tensor
    t2i_index: Tensor


def as_index_tensor(values: Sequence[int] | np.ndarray | Tensor, name: str = "text_to_image") -> Tensor:
    """A 1-D int64 CPU tensor from a sequence, numpy array or tensor of integers."""
    t = torch.as_tensor(np.asarray(values) if not isinstance(values, Tensor) else values).detach().cpu()
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer indices, got {t.dtype}")
    return t.long()


def _check_text_to_image(text_to_image: Tensor, n_images: int, n_texts: int) -> None:
    if text_to_image.numel() != n_texts:
        raise ValueError(f"text_to_image has {text_to_image.numel()} entries for {n_texts} texts")
    if n_texts and (int(text_to_image.min()) < 0 or int(text_to_image.max()) >= n_images):
        raise ValueError(f"text_to_image values must be image indices in [0, {n_images})")
    counts = torch.bincount(text_to_image, minlength=n_images)
    if bool((counts == 0).any()):
        first = int(torch.nonzero(counts == 0)[0])
        raise ValueError(
            f"{int((counts == 0).sum())} images have no text (e.g. image {first}); "
            "image->text recall needs at least one text per image"
        )


def recall_from_rankings(
    i2t_index: Tensor, t2i_index: Tensor, text_to_image: Sequence[int] | np.ndarray | Tensor
) -> dict[str, float]:
    """Recall@{1,5,10} from best-first lists: `i2t_index` [n_images, L] (text indices),
    `t2i_index` [n_texts, L'] (image indices). k larger than the candidate count is clipped
    (recall@10 over 3 images is recall@3)."""
    n_images, n_texts = i2t_index.shape[0], t2i_index.shape[0]
    if n_images == 0 or n_texts == 0:
        raise ValueError("retrieval recall needs at least one image and one text")
    gt = as_index_tensor(text_to_image)
    _check_text_to_image(gt, n_images, n_texts)
    i2t_index, t2i_index = i2t_index.detach().cpu().long(), t2i_index.detach().cpu().long()
    need_t, need_i = min(max(RECALL_KS), n_texts), min(max(RECALL_KS), n_images)
    if i2t_index.shape[1] < need_t or t2i_index.shape[1] < need_i:
        raise ValueError(
            f"ranked lists too short for recall@{max(RECALL_KS)}: "
            f"{i2t_index.shape[1]} texts per image, {t2i_index.shape[1]} images per text"
        )
    image_ids = torch.arange(n_images)[:, None]
    out: dict[str, float] = {}
    for k in RECALL_KS:
        out[f"ir_r{k}"] = 100 * (t2i_index[:, : min(k, need_i)] == gt[:, None]).any(1).double().mean().item()
    for k in RECALL_KS:
        hits = gt[i2t_index[:, : min(k, need_t)]] == image_ids
        out[f"tr_r{k}"] = 100 * hits.any(1).double().mean().item()
    out["r_mean"] = sum(out[key] for key in RECALL_KEYS[:-1]) / 6
    return {key: out[key] for key in RECALL_KEYS}


def _finite_block(block: Tensor) -> Tensor:
    block = block.float()
    if bool(torch.isnan(block).any()):
        raise ValueError("retrieval scores contain NaN")
    return block


def top_lists(
    scores: Tensor | np.ndarray, k: int = max(RECALL_KS), chunk: int = 1024
) -> tuple[Tensor, Tensor]:
    """Best-first index lists from a dense [n_images, n_texts] score matrix, computed in chunks
    of `chunk` rows / columns: (i2t [n_images, min(k, n_texts)], t2i [n_texts, min(k, n_images)])."""
    s = torch.as_tensor(scores)
    if s.dim() != 2:
        raise ValueError(f"retrieval scores must be [n_images, n_texts], got shape {tuple(s.shape)}")
    n_images, n_texts = s.shape
    k_t, k_i = min(k, n_texts), min(k, n_images)
    i2t = [_finite_block(s[a : a + chunk]).topk(k_t, dim=1).indices.cpu() for a in range(0, n_images, chunk)]
    t2i = [
        _finite_block(s[:, a : a + chunk]).topk(k_i, dim=0).indices.T.cpu() for a in range(0, n_texts, chunk)
    ]
    empty = torch.empty(0, 0, dtype=torch.long)
    return (torch.cat(i2t) if i2t else empty, torch.cat(t2i) if t2i else empty)


def retrieval_recall(
    scores: Tensor | np.ndarray | RankedLists | Any,
    text_to_image: Sequence[int] | np.ndarray | Tensor,
    chunk: int = 1024,
) -> dict[str, float]:
    """Recall@{1,5,10} in both directions and their mean, in percent.

    scores: [n_images, n_texts] similarity (higher = better; torch or numpy, any float dtype), or
        ranked lists (`RankedLists`, e.g. `RetrievalScores` from two-stage re-ranking).
    text_to_image: [n_texts] index of each text's image; several texts per image are expected
        (COCO has 5-7), and every image needs at least one.
    Returns {"ir_r1", "ir_r5", "ir_r10", "tr_r1", "tr_r5", "tr_r10", "r_mean"}.
    """
    if isinstance(scores, RankedLists):
        return recall_from_rankings(scores.i2t_index, scores.t2i_index, text_to_image)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    s = torch.as_tensor(scores)
    if s.dim() != 2 or 0 in s.shape:
        raise ValueError(
            f"retrieval scores must be a non-empty [n_images, n_texts] matrix, got {tuple(s.shape)}"
        )
    gt = as_index_tensor(text_to_image)
    _check_text_to_image(gt, *s.shape)  # before the expensive part
    i2t, t2i = top_lists(s, max(RECALL_KS), chunk)
    return recall_from_rankings(i2t, t2i, gt)
