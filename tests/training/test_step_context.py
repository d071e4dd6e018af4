"""The shared-pass step: encoder calls per step, batched fusion, gradients where they belong."""

from __future__ import annotations

import pytest
import torch

from scl_cli.config.recipe import FusionConfig, MaskingConfig, ModelConfig, TextConfig, VisionConfig
from scl_cli.model import SCLModel
from scl_cli.objectives import build_objectives, validate_objectives
from scl_cli.objectives.masking import TextSpec
from scl_cli.training.step import TrainStep

VOCAB, PAD, B, L = 60, 1, 4, 10
SPEC = TextSpec(VOCAB, PAD, 4, torch.arange(5), torch.ones(VOCAB, dtype=torch.bool))
ALL = {
    "itc": {"weight": 0.5},
    "itm": {"negatives": "hard"},
    "mlm": {},
    "scl_global": {},
    "scl_local": {"weight": 0.2},
}


def tiny_model() -> SCLModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        init="random",
        vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2),
        text=TextConfig(width=32, layers=1, heads=2, max_len=L),
        fusion=FusionConfig(width=32, layers=1, heads=2, dropout=0.0),
        itc_dim=16,
    )
    return SCLModel.from_recipe_model(cfg, VOCAB, PAD)


def make_batch(frames: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones(B, L, dtype=torch.long)
    ids[1, 6:], mask[1, 6:] = PAD, 0
    ids[1, 5] = 2
    return {"images": torch.randn(B, frames, 3, 32, 32, generator=g), "text_ids": ids, "text_mask": mask}


def step(model, objectives) -> TrainStep:
    return TrainStep(model, build_objectives(validate_objectives(objectives)), MaskingConfig(), SPEC)


def count_calls(monkeypatch, model: SCLModel) -> dict[str, list]:
    calls: dict[str, list] = {"vision": [], "text": [], "fusion": []}
    for name in calls:
        module = getattr(model, name)
        original = module.forward

        def wrapped(*args, _orig=original, _name=name, **kwargs):
            first = args[0] if args else next(iter(kwargs.values()))
            calls[_name].append(first.shape[0])
            return _orig(*args, **kwargs)

        monkeypatch.setattr(module, "forward", wrapped)
    return calls


def test_all_objectives_share_passes(monkeypatch):
    model = tiny_model()
    calls = count_calls(monkeypatch, model)
    out = step(model, ALL)(make_batch())
    # ViT: one call over the full and mask-token images (2B rows), one over the dropped-patch
    # images; RoBERTa: one call over the full, MLM and SCL texts (3B rows); fusion: the short
    # dropped-patch pass, and one batched call for itm + mlm + scl B + scl C
    assert sorted(calls["vision"]) == [B, 2 * B] and calls["text"] == [3 * B]
    assert sorted(calls["fusion"]) == [B, 4 * B]
    assert set(out) >= {"total", "itc", "itm", "mlm", "scl_global", "scl_local"}
    assert all(torch.isfinite(v).all() for v in out.values())


def test_only_itc_runs_one_pass_per_modality(monkeypatch):
    model = tiny_model()
    calls = count_calls(monkeypatch, model)
    step(model, {"itc": {}})(make_batch())
    assert len(calls["vision"]) == 1 and len(calls["text"]) == 1 and calls["fusion"] == []


def test_no_scl_ablation_skips_masked_passes(monkeypatch):
    model = tiny_model()
    calls = count_calls(monkeypatch, model)
    step(model, {"itc": {}, "itm": {}, "mlm": {}})(make_batch())
    assert calls["vision"] == [B] and calls["text"] == [2 * B] and calls["fusion"] == [2 * B]


def test_batched_encoder_passes_give_the_losses_and_gradients_of_separate_ones():
    """Declared variants share one encoder call; undeclared ones are encoded alone. Both must be
    the same computation, masks included (each mask draws from its own random stream)."""
    model = tiny_model().eval()  # no dropout: the two runs must match exactly

    def run(declare: bool) -> tuple[dict, torch.Tensor]:
        module = step(model, ALL)
        if not declare:
            for objective in module.objectives.values():
                objective.encodings = lambda: ((), ())
        model.zero_grad()
        out = module(make_batch(frames=2))
        out["total"].backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return {k: v.item() for k, v in out.items()}, grads

    (batched, g_batched), (alone, g_alone) = run(True), run(False)
    assert batched == pytest.approx(alone, rel=1e-5, abs=1e-6)
    assert torch.allclose(g_batched, g_alone, rtol=1e-4, atol=1e-6)


def test_a_mask_does_not_depend_on_which_draws_came_before():
    from scl_cli.objectives.masking import StepRandom

    first = StepRandom(0, 3, torch.device("cpu"), rows=4)
    first.uniform(7, stream="mlm")
    second = StepRandom(0, 3, torch.device("cpu"), rows=4)
    assert torch.equal(first.uniform(5, stream="drop"), second.uniform(5, stream="drop"))
    assert not torch.equal(
        second.uniform(5, stream="masktok"), StepRandom(0, 3, "cpu", 4).uniform(5, stream="drop")
    )
    assert not torch.equal(
        StepRandom(0, 4, "cpu", 4).uniform(5, stream="drop"), second.uniform(5, stream="drop")
    )


def test_total_is_the_weighted_sum_and_every_parameter_used_gets_gradient():
    model = tiny_model()
    out = step(model, ALL)(make_batch())
    weights = {"itc": 0.5, "itm": 1, "mlm": 1, "scl_global": 1, "scl_local": 0.2}
    want = sum(w * out[k] for k, w in weights.items())
    assert torch.allclose(out["total"], want)
    out["total"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    # images are T = 1: the temporal embedding is the one parameter a still-image step never reads
    assert no_grad == ["vision.temporal_embedding"], no_grad


def test_dropped_patches_get_no_gradient_through_the_step():
    model = tiny_model()
    batch = make_batch()
    batch["images"].requires_grad_(True)
    from scl_cli.objectives.context import StepContext

    ctx = StepContext(model, batch, MaskingConfig(), SPEC)
    enc = ctx.image("drop")
    enc.tokens.sum().backward()
    grad = batch["images"].grad.abs()  # [B, 1, 3, 32, 32]
    per_patch = grad[:, 0].sum(1).unfold(1, 8, 8).unfold(2, 8, 8).sum((-1, -2)).flatten(1)  # [B, 16]
    kept = torch.zeros(B, 16, dtype=torch.bool).scatter_(1, ctx.patch_drop.keep_index, True)
    assert torch.all(per_patch[~kept] == 0) and torch.all(per_patch[kept] > 0)


def test_video_batches_run_every_objective():
    model = tiny_model()
    out = step(model, ALL)(make_batch(frames=2))
    assert torch.isfinite(out["total"])


def test_reversed_variant_is_the_clip_played_backwards_and_costs_one_more_vision_pass(monkeypatch):
    from scl_cli.objectives.context import StepContext

    model = tiny_model().eval()
    with torch.no_grad():
        model.vision.temporal_embedding.normal_()  # frame order must matter for the check to mean much
    batch = make_batch(frames=3)
    ctx = StepContext(model, batch, MaskingConfig(), SPEC)
    want = model.encode_image(batch["images"].flip(1)).tokens
    assert torch.allclose(ctx.image("reversed").tokens, want)
    assert not torch.allclose(ctx.image("full").tokens, want)
    calls = count_calls(monkeypatch, model)
    step(model, {"itc": {"reversed_clips": True}})(make_batch(frames=3))
    assert calls["vision"] == [2 * B] and calls["text"] == [B]  # the reversed clips ride with the full ones


def test_fusion_request_conflict_is_an_error():
    from scl_cli.objectives.context import StepContext

    ctx = StepContext(tiny_model(), make_batch(), MaskingConfig(), SPEC)
    ctx.request_fusion("x", "full", "full")
    with pytest.raises(ValueError, match="requested twice"):
        ctx.request_fusion("x", "mlm", "full")


def test_rank_scores_of_two_image_variants_in_one_pass_equal_each_alone():
    from scl_cli.model.task_heads import add_rank_head
    from scl_cli.objectives.context import StepContext
    from scl_cli.objectives.rank import rank_scores

    model = tiny_model().eval()
    add_rank_head(model)
    with torch.no_grad():
        model.vision.temporal_embedding.normal_()
        ctx = StepContext(model, make_batch(frames=3), MaskingConfig(), SPEC)
        rows = torch.arange(B)
        both = rank_scores(ctx, torch.cat([rows, B + rows]), torch.cat([rows, rows]), ("full", "reversed"))
        assert torch.allclose(both[:B], rank_scores(ctx, rows, rows), atol=1e-5)
        assert torch.allclose(both[B:], rank_scores(ctx, rows, rows, ("reversed",)), atol=1e-5)
        assert not torch.allclose(both[:B], both[B:])


def test_a_batch_trimmed_to_its_longest_caption_gives_the_same_losses_and_gradients():
    """`data.pad_to_multiple`: the columns cut are padding in every row, and the text masks are drawn
    at max_len then cut, so the step sees the same masks and computes the same losses. (The text
    encoder's dropout draws [B, L, D] from the global RNG, so in training mode only those draws
    differ: the test turns dropout off.)"""
    full = make_batch()
    full["text_ids"][:, 7:], full["text_mask"][:, 7:] = PAD, 0  # the longest caption: 7 tokens
    full["text_ids"][:, 6] = 2
    trimmed = {**full, "text_ids": full["text_ids"][:, :8], "text_mask": full["text_mask"][:, :8]}
    outs, grads = [], []
    for batch in (full, trimmed):
        model = tiny_model().eval()
        out = step(model, ALL)(batch)
        out["total"].backward()
        outs.append({k: v.detach() for k, v in out.items()})
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert set(outs[0]) == set(outs[1])
    for key in outs[0]:
        torch.testing.assert_close(outs[1][key], outs[0][key], rtol=1e-5, atol=1e-5, msg=key)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_several_processes_pad_a_trimmed_batch_back_to_max_len(monkeypatch):
    """Masked-word features are gathered across processes: every rank must give them one width."""
    import scl_cli.training.step as step_module

    model = tiny_model()
    module = step(model, {"itc": {}})
    seen = []
    monkeypatch.setattr(step_module, "dist_info", lambda: step_module.DistInfo(rank=0, world_size=2))
    monkeypatch.setattr(step_module, "StepContext", lambda m, batch, *a, **k: seen.append(batch) or 1 / 0)
    batch = make_batch()
    batch = {**batch, "text_ids": batch["text_ids"][:, :8], "text_mask": batch["text_mask"][:, :8]}
    with pytest.raises(ZeroDivisionError):
        module(batch)
    ids, mask = seen[0]["text_ids"], seen[0]["text_mask"]
    assert ids.shape == mask.shape == (B, L)
    assert (
        torch.equal(ids[:, :8], batch["text_ids"]) and (ids[:, 8:] == PAD).all() and (mask[:, 8:] == 0).all()
    )
