"""Retrieval recall@k on hand-built score matrices, several captions per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scl_cli.metrics import recall_from_rankings, retrieval_recall

# 3 images x 6 captions; captions 0,1 -> image 0, captions 2,3 -> image 1, captions 4,5 -> image 2.
TEXT_TO_IMAGE = [0, 0, 1, 1, 2, 2]
SCORES = torch.tensor(
    [
        # t0    t1    t2    t3    t4    t5
        [0.90, 0.10, 0.80, 0.20, 0.30, 0.40],  # image 0: own caption t0 first          -> rank 1
        [0.85, 0.80, 0.10, 0.70, 0.60, 0.50],  # image 1: t0, t1, t3 (own)              -> rank 3
        [0.50, 0.60, 0.70, 0.80, 0.20, 0.10],  # image 2: t3, t2, t1, t0, t4 (own)      -> rank 5
    ]
)
# Text -> image ranks of each caption's own image (columns): t0: 1 (0.90 > 0.85 > 0.50);
# t1: 3; t2: 3; t3: 2; t4: 3; t5: 3.


def _brute_force(scores: np.ndarray, text_to_image: list[int]) -> dict[str, float]:
    """Reference: 1-based rank of the first positive, by counting strictly better scores."""
    n_images, n_texts = scores.shape
    ir_rank = [1 + int((scores[:, t] > scores[text_to_image[t], t]).sum()) for t in range(n_texts)]
    tr_rank = [
        1 + min(int((scores[i] > scores[i, t]).sum()) for t in range(n_texts) if text_to_image[t] == i)
        for i in range(n_images)
    ]
    out = {}
    for k in (1, 5, 10):
        out[f"ir_r{k}"] = 100 * float(np.mean([r <= k for r in ir_rank]))
    for k in (1, 5, 10):
        out[f"tr_r{k}"] = 100 * float(np.mean([r <= k for r in tr_rank]))
    out["r_mean"] = sum(out.values()) / 6
    return out


def test_hand_built_ranks() -> None:
    recall = retrieval_recall(SCORES, TEXT_TO_IMAGE)
    assert list(recall) == ["ir_r1", "ir_r5", "ir_r10", "tr_r1", "tr_r5", "tr_r10", "r_mean"]
    assert recall["tr_r1"] == pytest.approx(100 / 3)  # only image 0 at rank 1
    assert recall["tr_r5"] == pytest.approx(100.0)  # ranks 1, 3, 5
    assert recall["tr_r10"] == pytest.approx(100.0)
    assert recall["ir_r1"] == pytest.approx(100 / 6)  # only t0
    assert recall["ir_r5"] == recall["ir_r10"] == pytest.approx(100.0)  # k > 3 images: clipped
    assert recall["r_mean"] == pytest.approx((100 / 3 + 200 + 100 / 6 + 200) / 6)
    assert recall == pytest.approx(_brute_force(SCORES.numpy(), TEXT_TO_IMAGE))


def test_top5_boundary() -> None:
    # Image 2's own caption moves from rank 5 to rank 6 when one more caption beats it.
    scores = torch.cat([SCORES, torch.zeros(3, 1)], dim=1)
    scores[2, 6] = 0.9  # t6 belongs to image 0 but is image 2's best match
    recall = retrieval_recall(scores, [*TEXT_TO_IMAGE, 0])
    assert recall["tr_r5"] == pytest.approx(200 / 3) and recall["tr_r10"] == pytest.approx(100.0)


@pytest.mark.parametrize("chunk", [1, 2, 1024])
def test_matches_brute_force_with_many_captions(chunk: int) -> None:
    gen = torch.Generator().manual_seed(0)
    n_images, per_image = 17, 5
    text_to_image = [i for i in range(n_images) for _ in range(per_image)]
    scores = torch.randn(n_images, n_images * per_image, generator=gen)
    scores[torch.tensor(text_to_image), torch.arange(len(text_to_image))] += 1.5  # some signal
    recall = retrieval_recall(scores, text_to_image, chunk=chunk)
    assert recall == pytest.approx(_brute_force(scores.numpy(), text_to_image))
    # numpy (float64 and float16 - exactly representable here) and tensor text_to_image agree.
    assert retrieval_recall(scores.numpy().astype(np.float64), np.array(text_to_image)) == recall
    assert 0 < recall["ir_r1"] < recall["ir_r10"] < 100


def test_ranked_lists_input() -> None:
    i2t = SCORES.argsort(dim=1, descending=True)
    t2i = SCORES.T.argsort(dim=1, descending=True)
    assert recall_from_rankings(i2t, t2i, TEXT_TO_IMAGE) == retrieval_recall(SCORES, TEXT_TO_IMAGE)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="entries for 6 texts"):
        retrieval_recall(SCORES, [0, 0, 1])
    with pytest.raises(ValueError, match="image indices"):
        retrieval_recall(SCORES, [0, 0, 1, 1, 2, 3])
    with pytest.raises(ValueError, match="have no text"):
        retrieval_recall(SCORES, [0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(torch.full((3, 6), float("nan")), TEXT_TO_IMAGE)
    with pytest.raises(ValueError, match=r"\[n_images, n_texts\]"):
        retrieval_recall(torch.zeros(6), TEXT_TO_IMAGE)
    with pytest.raises(ValueError, match="too short"):
        recall_from_rankings(
            torch.zeros(3, 2, dtype=torch.long), torch.zeros(6, 3, dtype=torch.long), TEXT_TO_IMAGE
        )
