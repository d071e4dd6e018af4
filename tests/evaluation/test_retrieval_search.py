"""Two-stage retrieval: ITC shortlist, re-ranking of the top-k, exhaustive re-ranking, chunking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scl_cli.metrics import retrieval_recall
from scl_cli.search.ranking import RetrievalScores, recall_at_k_two_stage, two_stage_scores

N_IMAGES, PER_IMAGE, DIM = 23, 3, 8
TEXT_TO_IMAGE = torch.arange(N_IMAGES).repeat_interleave(PER_IMAGE)


def _features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(N_IMAGES, DIM, generator=gen)
    texts = images[TEXT_TO_IMAGE] + 1.2 * torch.randn(len(TEXT_TO_IMAGE), DIM, generator=gen)
    return images * 3, texts  # not unit-norm: two_stage_scores normalises


IMAGES, TEXTS = _features()
ITC = F.normalize(IMAGES, dim=-1) @ F.normalize(TEXTS, dim=-1).T


class CountingRerank:
    """rerank = a fixed score matrix; records every pair and batch size it was asked for."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix
        self.pairs: list[tuple[int, int]] = []
        self.batches: list[int] = []

    def __call__(self, image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        assert image_idx.dtype == text_idx.dtype == torch.long and image_idx.shape == text_idx.shape
        self.batches.append(image_idx.numel())
        self.pairs += list(zip(image_idx.tolist(), text_idx.tolist(), strict=True))
        return self.matrix[image_idx, text_idx]


def _expected_lists(itc: torch.Tensor, rerank: torch.Tensor, k: int, keep: int = 10) -> torch.Tensor:
    """Per row: top-k by ITC reordered by rerank score, then the next ones by ITC."""
    order = itc.argsort(dim=1, descending=True)
    top = order[:, :k]
    top = top.gather(1, rerank.gather(1, top).argsort(dim=1, descending=True))
    return torch.cat([top, order[:, k:]], dim=1)[:, : max(k, keep)]


def test_itc_only_equals_dense_recall() -> None:
    rerank = CountingRerank(-ITC)
    for k in (0, None):
        scores = two_stage_scores(IMAGES, TEXTS, rerank, k=k)
        assert scores.mode == "itc" and scores.pairs_scored == 0
        assert recall_at_k_two_stage(scores, TEXT_TO_IMAGE) == retrieval_recall(ITC, TEXT_TO_IMAGE)
        assert torch.equal(scores.i2t_index, ITC.topk(10, dim=1).indices)
        assert torch.equal(scores.t2i_index, ITC.T.topk(10, dim=1).indices)
    assert rerank.pairs == []
    scores = two_stage_scores(IMAGES, TEXTS, None, k=16)
    assert scores.mode == "itc"
    # RetrievalScores is accepted by retrieval_recall directly.
    assert retrieval_recall(scores, TEXT_TO_IMAGE) == retrieval_recall(ITC, TEXT_TO_IMAGE)


def test_rerank_reversing_itc_order_inside_top_k() -> None:
    k = 6
    rerank = CountingRerank(-ITC)  # reverses the ITC order among the candidates
    scores = two_stage_scores(IMAGES, TEXTS, rerank, k=k)
    assert scores.mode == "two_stage" and (scores.i2t_reranked, scores.t2i_reranked) == (k, k)
    assert torch.equal(scores.i2t_index, _expected_lists(ITC, -ITC, k))
    assert torch.equal(scores.t2i_index, _expected_lists(ITC.T, -ITC.T, k))
    assert torch.equal(scores.i2t_index[:, :k], ITC.topk(k, dim=1).indices.flip(1))
    assert torch.allclose(scores.i2t_score[:, :k], -ITC.topk(k, dim=1).values.flip(1))
    # Recall follows the rerank: the dense form of the documented convention (candidates get
    # rerank score + an offset above every ITC score, the rest keep ITC) gives the same recall.
    dense_i2t, dense_t2i = ITC.clone(), ITC.clone()
    rows = torch.arange(N_IMAGES)[:, None]
    dense_i2t[rows, scores.i2t_index[:, :k]] = -ITC[rows, scores.i2t_index[:, :k]] + 10
    cols = torch.arange(len(TEXT_TO_IMAGE))[:, None]
    dense_t2i[scores.t2i_index[:, :k], cols] = -ITC[scores.t2i_index[:, :k], cols] + 10
    recall = recall_at_k_two_stage(scores, TEXT_TO_IMAGE)
    tr = retrieval_recall(dense_i2t, TEXT_TO_IMAGE)
    ir = retrieval_recall(dense_t2i, TEXT_TO_IMAGE)
    for key in ("r1", "r5", "r10"):
        assert recall[f"tr_{key}"] == tr[f"tr_{key}"] and recall[f"ir_{key}"] == ir[f"ir_{key}"]
    assert recall["tr_r1"] < retrieval_recall(ITC, TEXT_TO_IMAGE)["tr_r1"]  # reversing hurts


def test_each_unique_pair_reranked_once() -> None:
    k = 5
    rerank = CountingRerank(torch.randn(ITC.shape, generator=torch.Generator().manual_seed(1)))
    scores = two_stage_scores(IMAGES, TEXTS, rerank, k=k, pair_batch=7)
    assert len(rerank.pairs) == len(set(rerank.pairs)) == scores.pairs_scored
    expected = {(i, int(t)) for i in range(N_IMAGES) for t in ITC[i].topk(k).indices}
    expected |= {(int(i), t) for t in range(len(TEXT_TO_IMAGE)) for i in ITC[:, t].topk(k).indices}
    assert set(rerank.pairs) == expected
    assert len(expected) < N_IMAGES * k + len(TEXT_TO_IMAGE) * k  # some pairs were in both directions
    assert max(rerank.batches) == 7


def test_exhaustive_equals_ranking_by_rerank() -> None:
    other = torch.randn(ITC.shape, generator=torch.Generator().manual_seed(2))
    for k in ("all", -1):
        rerank = CountingRerank(other)
        scores = two_stage_scores(IMAGES, TEXTS, rerank, k=k, chunk=5, pair_batch=13)
        assert scores.mode == "exhaustive" and scores.pairs_scored == other.numel()
        assert sorted(rerank.pairs) == [(i, t) for i in range(N_IMAGES) for t in range(len(TEXT_TO_IMAGE))]
        assert max(rerank.batches) == 13
        assert torch.equal(scores.i2t_index, other.topk(10, dim=1).indices)
        assert torch.equal(scores.t2i_index, other.T.topk(10, dim=1).indices)
        assert recall_at_k_two_stage(scores, TEXT_TO_IMAGE) == retrieval_recall(other, TEXT_TO_IMAGE)


def test_chunk_size_does_not_change_results() -> None:
    rerank = CountingRerank(torch.randn(ITC.shape, generator=torch.Generator().manual_seed(3)))
    results = [two_stage_scores(IMAGES, TEXTS, rerank, k=4, chunk=chunk) for chunk in (1, 7, 1024)]
    for other in results[1:]:
        for name in ("i2t_index", "t2i_index"):
            assert torch.equal(getattr(results[0], name), getattr(other, name))
        for name in ("i2t_score", "t2i_score"):
            assert torch.allclose(getattr(results[0], name), getattr(other, name), atol=1e-6)
        assert other.pairs_scored == results[0].pairs_scored


def test_k_larger_than_collection_and_progress() -> None:
    images, texts = IMAGES[:4], TEXTS[:6]  # 4 images, 6 texts (image 3 has none: fine here)
    calls: list[tuple[str, int, int]] = []
    rerank = CountingRerank(-ITC)
    scores = two_stage_scores(images, texts, rerank, k=50, chunk=3, progress=lambda *a: calls.append(a))
    assert isinstance(scores, RetrievalScores)
    assert scores.i2t_index.shape == (4, 6) and scores.t2i_index.shape == (6, 4)
    assert len(rerank.pairs) == 24  # every pair is a candidate
    assert torch.equal(scores.i2t_index, (-ITC[:4, :6]).argsort(dim=1, descending=True))
    assert ("itc", 4, 4) in calls and calls[-1] == ("rerank", 24, 24)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="same E"):
        two_stage_scores(IMAGES, TEXTS[:, :3], None, k=None)
    with pytest.raises(ValueError, match="k must be"):
        two_stage_scores(IMAGES, TEXTS, CountingRerank(ITC), k=-3)
    with pytest.raises(ValueError, match="returned 1 scores"):
        two_stage_scores(IMAGES, TEXTS, lambda i, t: torch.zeros(1), k=2, pair_batch=4)
