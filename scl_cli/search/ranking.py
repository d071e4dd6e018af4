"""Two-stage image-text ranking (ITC shortlist, then re-ranking), independent of the model.

Stage 1 ranks every text for every image and every image for every text by ITC similarity:
the inner product of unit-normalised features, computed `chunk` image rows at a time. Stage 2
(`k` > 0 and a `rerank` function) re-scores, for each image its top-k texts and for each text
its top-k images, with `rerank` (e.g. the ITM head) and reorders those k candidates by it.

Result: `RetrievalScores`, the sparse form of the two final score matrices (i2t for image->text
recall, t2i for text->image recall). Instead of two dense [N_i, N_t] matrices (2 GB for COCO's
5k x 25k in float32) it keeps, per query row, the best-first list of its top L = max(10, k)
candidates. The ranking is defined as:

- the k re-scored candidates come first, ordered by rerank score (ties: ITC order) - as if a
  dense matrix gave candidates "rerank score + an offset larger than any ITC score";
- then the non-candidates in ITC order (the stored scores are their ITC similarities).

So recall@k' for k' <= k is exactly the re-ranked ranking, and for k' > k it falls back to ITC
(ALBEF and BLIP leave non-candidates at a constant -100; the paper's code, like METER's, scores
every pair with the rank head: `k = "all"` below). Peak memory is the features
plus O(chunk x N) floats for one block and the O((N_i + N_t) x L) lists.

`k = "all"` (or -1) sends every pair through `rerank` (exhaustive, chunked; the ranking is the
rerank score alone), for comparison with the paper's rank-all evaluation. `k` None/0 or no
`rerank` gives ITC only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from scl_cli.metrics.retrieval import RECALL_KS, recall_from_rankings

RerankFn = Callable[[Tensor, Tensor], Tensor]
"""rerank(image_idx [P] int64, text_idx [P] int64) -> scores [P], higher = better match.
The indices are CPU tensors into the feature rows given to `two_stage_scores`."""
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RetrievalScores:
    """Best-first candidate lists for both directions (see the module docstring for the order).

    i2t_index [N_i, L_t] int64: text indices per image; i2t_score [N_i, L_t] float32 their scores.
    t2i_index [N_t, L_i] int64: image indices per text; t2i_score [N_t, L_i] float32.
    The first `i2t_reranked` (`t2i_reranked`) entries of each row carry rerank scores, the rest
    ITC similarities. mode: "itc", "two_stage" or "exhaustive"; pairs_scored: pairs sent to rerank.
    """

    i2t_index: Tensor
    i2t_score: Tensor
    t2i_index: Tensor
    t2i_score: Tensor
    i2t_reranked: int
    t2i_reranked: int
    mode: str
    pairs_scored: int

    @property
    def n_images(self) -> int:
        return self.i2t_index.shape[0]

    @property
    def n_texts(self) -> int:
        return self.t2i_index.shape[0]


def rerank_order(scores: Tensor) -> Tensor:
    """The order of re-scored candidates: by fusion score, best first; ties keep their ITC order.
    scores [..., k] of candidates given in ITC order -> indices [..., k]. The one ranking rule of
    `scl eval retrieval --rerank K`, `scl retrieve --rerank K` and `scl serve`'s /search (all of
    them score pairs with `score_pairs` and order them with `rerank_rows`)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def _parse_k(k: int | str | None) -> int | Literal["all"] | None:
    if k is None or k == 0:
        return None
    if k == "all" or k == -1:
        return "all"
    if isinstance(k, int) and not isinstance(k, bool) and k > 0:
        return k
    raise ValueError(f'k must be None, 0, a positive integer, "all" or -1; got {k!r}')


def _rerank_batch(rerank: RerankFn, images: Tensor, texts: Tensor) -> Tensor:
    out = rerank(images, texts)
    out = torch.as_tensor(out).detach().reshape(-1)
    if out.numel() != images.numel():
        raise ValueError(f"rerank returned {out.numel()} scores for {images.numel()} pairs")
    return out.float().cpu()


class _StreamingTopK:
    """Row-wise top-L of each [c, N_t] block (i2t) and a running column-wise top-L over all
    blocks seen (t2i), so the full matrix never exists."""

    def __init__(self, keep_t: int, keep_i: int) -> None:
        self.keep_t, self.keep_i = keep_t, keep_i
        self.rows_v: list[Tensor] = []
        self.rows_i: list[Tensor] = []
        self.col_v: Tensor | None = None
        self.col_i: Tensor | None = None

    def add(self, block: Tensor, row0: int) -> None:
        top = block.topk(self.keep_t, dim=1)
        self.rows_v.append(top.values.cpu())
        self.rows_i.append(top.indices.cpu())
        top = block.topk(min(self.keep_i, block.shape[0]), dim=0)
        values, indices = top.values, top.indices + row0
        if self.col_v is not None:
            values, indices = torch.cat([self.col_v, values]), torch.cat([self.col_i, indices])
            top = values.topk(min(self.keep_i, values.shape[0]), dim=0)
            values, indices = top.values, indices.gather(0, top.indices)
        self.col_v, self.col_i = values, indices

    def result(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        assert self.col_v is not None and self.col_i is not None
        return (
            torch.cat(self.rows_i),
            torch.cat(self.rows_v),
            self.col_i.T.contiguous().cpu(),
            self.col_v.T.contiguous().cpu(),
        )


def _itc_lists(
    images: Tensor, texts: Tensor, keep_t: int, keep_i: int, chunk: int, progress: ProgressFn | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n_images = images.shape[0]
    stream = _StreamingTopK(keep_t, keep_i)
    for a in range(0, n_images, chunk):
        b = min(a + chunk, n_images)
        stream.add(images[a:b] @ texts.T, a)
        if progress:
            progress("itc", b, n_images)
    return stream.result()


def _exhaustive_lists(
    rerank: RerankFn,
    n_images: int,
    n_texts: int,
    keep_t: int,
    keep_i: int,
    chunk: int,
    pair_batch: int,
    progress: ProgressFn | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    stream = _StreamingTopK(keep_t, keep_i)
    total = n_images * n_texts
    for a in range(0, n_images, chunk):
        b = min(a + chunk, n_images)
        block = torch.empty((b - a) * n_texts)
        for p in range(0, block.numel(), pair_batch):
            flat = torch.arange(p, min(p + pair_batch, block.numel()))
            block[p : p + flat.numel()] = _rerank_batch(rerank, a + flat // n_texts, flat % n_texts)
            if progress:
                progress("rerank all", a * n_texts + p + flat.numel(), total)
        stream.add(block.view(b - a, n_texts), a)
    return stream.result()


def score_pairs(
    rerank: RerankFn,
    image_idx: Tensor,
    text_idx: Tensor,
    n_texts: int,
    pair_batch: int = 256,
    progress: ProgressFn | None = None,
) -> Tensor:
    """Scores [P] of the (image_idx[p], text_idx[p]) pairs, each distinct pair sent to `rerank`
    once, `pair_batch` pairs per call (in pair order: image-major). `n_texts` bounds text_idx."""
    codes = image_idx.reshape(-1).long() * n_texts + text_idx.reshape(-1).long()  # pair = image * N_t + text
    unique, inverse = torch.unique(codes, return_inverse=True)  # sorted
    scores = torch.empty(unique.numel())
    for a in range(0, unique.numel(), pair_batch):
        batch = unique[a : a + pair_batch]
        scores[a : a + batch.numel()] = _rerank_batch(rerank, batch // n_texts, batch % n_texts)
        if progress:
            progress("rerank", a + batch.numel(), unique.numel())
    return scores[inverse]


def rerank_rows(scores: Tensor, scored: Tensor | None = None) -> Tensor:
    """The order of each row's re-ranked candidates [Q, k] (given in ITC order): the scored ones
    by fusion score, best first (ties keep ITC order), then those that could not be scored (`scored`
    False, e.g. an image file that is gone) in ITC order. -> indices [Q, k]."""
    if scored is not None:
        scores = torch.where(scored, scores, torch.tensor(float("-inf"), dtype=scores.dtype))
    return rerank_order(scores)


def _rerank_candidates(
    rerank: RerankFn,
    i2t_index: Tensor,
    i2t_score: Tensor,
    t2i_index: Tensor,
    t2i_score: Tensor,
    k_t: int,
    k_i: int,
    pair_batch: int,
    progress: ProgressFn | None,
) -> int:
    """Re-score the first k_t (k_i) entries of every i2t (t2i) row in place, each unique
    (image, text) pair once; returns the number of pairs scored."""
    n_images, n_texts = i2t_index.shape[0], t2i_index.shape[0]
    i2t_images = torch.arange(n_images)[:, None].expand(-1, k_t)
    t2i_texts = torch.arange(n_texts)[:, None].expand(-1, k_i)
    images = torch.cat([i2t_images.reshape(-1), t2i_index[:, :k_i].reshape(-1)])
    texts = torch.cat([i2t_index[:, :k_t].reshape(-1), t2i_texts.reshape(-1)])
    scores = score_pairs(rerank, images, texts, n_texts, pair_batch, progress)
    split = n_images * k_t
    for index, value, rr in (
        (i2t_index, i2t_score, scores[:split].view(n_images, k_t)),
        (t2i_index, t2i_score, scores[split:].view(n_texts, k_i)),
    ):
        k = rr.shape[1]
        order = rerank_rows(rr)
        index[:, :k] = index[:, :k].gather(1, order)
        value[:, :k] = rr.gather(1, order)
    return int(torch.unique(images * n_texts + texts).numel())


@torch.no_grad()
def two_stage_scores(
    image_feats: Tensor,
    text_feats: Tensor,
    rerank: RerankFn | None,
    k: int | str | None,
    chunk: int = 1024,
    pair_batch: int = 256,
    progress: ProgressFn | None = None,
    keep: int = max(RECALL_KS),
) -> RetrievalScores:
    """Rank texts per image and images per text: ITC, optionally re-ranked (module docstring).

    image_feats [N_i, E], text_feats [N_t, E]: ITC embeddings (normalised here; any device).
    rerank: scores (image, text) index pairs, at most `pair_batch` per call; None = ITC only.
    k: candidates re-scored per query; None/0 = ITC only, "all"/-1 = every pair (exhaustive).
        Clipped to the number of candidates.
    chunk: image rows per similarity block (memory ~ chunk x N_t floats).
    progress: called as progress(stage, done, total), stage "itc", "rerank" or "rerank all".
    keep: ranked-list length kept per query, raised to k if smaller (10 suffices for recall@10).
    """
    if image_feats.dim() != 2 or text_feats.dim() != 2 or image_feats.shape[1] != text_feats.shape[1]:
        raise ValueError(
            f"features must be [N_i, E] and [N_t, E] with the same E; got {tuple(image_feats.shape)} "
            f"and {tuple(text_feats.shape)}"
        )
    n_images, n_texts = image_feats.shape[0], text_feats.shape[0]
    if n_images == 0 or n_texts == 0:
        raise ValueError("retrieval needs at least one image and one text")
    if chunk < 1 or pair_batch < 1 or keep < 1:
        raise ValueError(f"chunk, pair_batch and keep must be >= 1; got {chunk}, {pair_batch}, {keep}")
    k_mode = _parse_k(k)
    if rerank is None:
        k_mode = None

    if k_mode == "all":
        keep_t, keep_i = min(keep, n_texts), min(keep, n_images)
        assert rerank is not None
        lists = _exhaustive_lists(rerank, n_images, n_texts, keep_t, keep_i, chunk, pair_batch, progress)
        return RetrievalScores(*lists, keep_t, keep_i, "exhaustive", n_images * n_texts)

    k_t, k_i = (min(k_mode, n_texts), min(k_mode, n_images)) if k_mode else (0, 0)
    keep_t, keep_i = max(min(keep, n_texts), k_t), max(min(keep, n_images), k_i)
    images = F.normalize(image_feats.detach().float(), dim=-1)
    texts = F.normalize(text_feats.detach().float(), dim=-1)
    i2t_index, i2t_score, t2i_index, t2i_score = _itc_lists(images, texts, keep_t, keep_i, chunk, progress)
    del images, texts
    if not k_mode:
        return RetrievalScores(i2t_index, i2t_score, t2i_index, t2i_score, 0, 0, "itc", 0)
    assert rerank is not None
    scored = _rerank_candidates(
        rerank, i2t_index, i2t_score, t2i_index, t2i_score, k_t, k_i, pair_batch, progress
    )
    return RetrievalScores(i2t_index, i2t_score, t2i_index, t2i_score, k_t, k_i, "two_stage", scored)


def recall_at_k_two_stage(
    scores: RetrievalScores, text_to_image: Sequence[int] | np.ndarray | Tensor
) -> dict[str, float]:
    """Recall@{1,5,10} (percent) of a two-stage ranking; keys as `retrieval_recall`."""
    return recall_from_rankings(scores.i2t_index, scores.t2i_index, text_to_image)
