"""Fine-tuning objectives against plain re-statements of their formulas, on fixed logits."""

from types import SimpleNamespace

import torch

from scl_cli.objectives import build_objectives, validate_objectives
from scl_cli.objectives import nlvr2 as nlvr2_module
from scl_cli.objectives import rank as rank_module
from scl_cli.objectives import vqa as vqa_module
from scl_cli.objectives.rank import sample_negative_texts


def objective(name, **settings):
    return build_objectives(validate_objectives({name: settings}))[name]


def test_vqa_is_soft_score_bce_scaled_by_the_answer_count(monkeypatch):
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0, 0.3], [0.0, 0.6, 0.0]], dtype=torch.float64)
    monkeypatch.setattr(vqa_module, "vqa_logits", lambda ctx: logits)
    ctx = SimpleNamespace(batch={"vqa_targets": targets})
    got = objective("vqa", answers=3).loss(ctx)
    # sum over answers of BCE(sigmoid(x), y), averaged over questions
    p = torch.sigmoid(logits)
    per_q = -(targets * p.log() + (1 - targets) * (1 - p).log()).sum(1)
    assert abs(float(got["loss"]) - float(per_q.mean())) < 1e-12
    assert abs(float(got["score"]) - (1.0 + 0.6) / 2) < 1e-12  # score of the arg-max answers


def test_nlvr2_is_cross_entropy_over_true_false(monkeypatch):
    logits = torch.tensor([[1.0, 3.0], [2.0, -1.0], [0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([1, 1, 0])
    monkeypatch.setattr(nlvr2_module, "nlvr2_logits", lambda ctx: logits)
    got = objective("nlvr2").loss(SimpleNamespace(batch={"labels": labels}))
    want = sum(-torch.log_softmax(logits[i], 0)[labels[i]] for i in range(3)) / 3
    assert abs(float(got["loss"]) - float(want)) < 1e-12
    assert abs(float(got["accuracy"]) - 2 / 3) < 1e-6


def test_rank_puts_the_true_caption_first(monkeypatch):
    B, negatives = 5, 3
    table = torch.randn(B, B, dtype=torch.float64)  # score of (image i, text j)
    monkeypatch.setattr(rank_module, "rank_scores", lambda ctx, img, txt, variants=("full",): table[img, txt])
    torch.manual_seed(0)
    ctx = SimpleNamespace(batch_size=B, device=torch.device("cpu"))
    got = objective("rank", negatives=negatives).loss(ctx)
    torch.manual_seed(0)
    chosen = sample_negative_texts(B, negatives, torch.device("cpu"))
    want = 0.0
    for i in range(B):
        row = torch.cat([table[i, i : i + 1], table[i, chosen[i]]])
        want += float(-torch.log_softmax(row, 0)[0])
    assert abs(float(got["loss"]) - want / B) < 1e-12


def test_rank_reversed_clips_add_the_backwards_clip_with_its_caption(monkeypatch):
    B, negatives = 4, 2
    table = torch.randn(B, B, dtype=torch.float64)
    backwards = torch.randn(B, B, dtype=torch.float64)  # score of (clip i played backwards, text j)
    bank = torch.cat([table, backwards])  # rows B + i: clip i played backwards
    calls = []

    def scores(ctx, img, txt, variants=("full",)):
        calls.append(variants)
        return bank[img, txt]

    monkeypatch.setattr(rank_module, "rank_scores", scores)
    torch.manual_seed(0)
    ctx = SimpleNamespace(batch_size=B, device=torch.device("cpu"), frames=4)
    got = objective("rank", negatives=negatives, reversed_clips=True).loss(ctx)
    torch.manual_seed(0)
    chosen = sample_negative_texts(B, negatives, torch.device("cpu"))
    want = 0.0
    for i in range(B):
        row = torch.cat([table[i, i : i + 1], table[i, chosen[i]], backwards[i, i : i + 1]])
        want += float(-torch.log_softmax(row, 0)[0])
    assert abs(float(got["loss"]) - want / B) < 1e-12
    assert calls == [("full", "reversed")]  # every pair in one fusion pass


def test_negative_captions_are_distinct_and_never_the_positive():
    torch.manual_seed(0)
    idx = sample_negative_texts(16, 15, torch.device("cpu"))
    assert idx.shape == (16, 15)
    for i, row in enumerate(idx.tolist()):
        assert i not in row and len(set(row)) == 15


def test_task_objectives_are_not_in_the_pretraining_default():
    assert set(validate_objectives({})) == {"itc", "itm", "mlm", "scl_global", "scl_local"}
