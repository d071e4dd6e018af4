"""Speed options change nothing but speed: activation checkpointing and compiled layers give the
step's losses and gradients; the whole step (every objective) runs on the meta device, so it reads
no tensor value on the host (no device sync); parameters a recipe cannot reach are found."""

from __future__ import annotations

import pytest
import torch

from scl_cli.config.recipe import MaskingConfig
from scl_cli.objectives import build_objectives, validate_objectives
from scl_cli.objectives.masking import TextSpec
from scl_cli.training.freeze import unreachable_parameters
from scl_cli.training.parallel import transformer_layers
from scl_cli.training.step import TrainStep

from .test_step_context import ALL, SPEC, make_batch, tiny_model


def losses_and_grads(objectives: dict, checkpointing: bool = False, compile_backend: str | None = None):
    model = tiny_model()
    model.train()
    model.set_gradient_checkpointing(checkpointing)
    if compile_backend is not None:
        for layer in transformer_layers(model):
            layer.compile(backend=compile_backend)
    step = TrainStep(model, build_objectives(validate_objectives(objectives)), MaskingConfig(), SPEC, seed=3)
    torch.manual_seed(11)  # dropout draws; masks come from the step's own seed
    logs = step(make_batch())
    logs["total"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in logs.items()}, grads


def assert_same(a, b, atol=1e-5):
    (logs_a, grads_a), (logs_b, grads_b) = a, b
    assert logs_a.keys() == logs_b.keys() and grads_a.keys() == grads_b.keys()
    for key in logs_a:
        torch.testing.assert_close(logs_a[key], logs_b[key], atol=atol, rtol=1e-4, msg=key)
    for key in grads_a:
        torch.testing.assert_close(grads_a[key], grads_b[key], atol=atol, rtol=1e-4, msg=key)


def test_activation_checkpointing_gives_the_same_losses_and_gradients():
    assert_same(losses_and_grads(ALL), losses_and_grads(ALL, checkpointing=True))


def test_compiled_layers_give_the_same_losses_and_gradients():
    # aot_eager traces forward and backward graphs as inductor does, without generating code
    # (`scl bench pretrain --compile` runs inductor). ITC + MLM run every kind of layer.
    objectives = {"itc": {}, "mlm": {}}
    torch._dynamo.reset()
    try:
        assert_same(losses_and_grads(objectives), losses_and_grads(objectives, compile_backend="aot_eager"))
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize(
    ("objectives", "unreachable"),
    [
        (ALL, {"vision.temporal_embedding"}),
        (
            {"itc": {}, "itm": {}, "mlm": {}, "scl_global": {}},
            {"vision.temporal_embedding", "vision.mask_token"},
        ),
    ],
)
def test_whole_step_runs_on_meta_and_finds_unreachable_parameters(objectives, unreachable):
    # Meta tensors hold no data: anything reading values on the host (.item(), .nonzero(),
    # boolean-mask indexing) would raise. This runs every objective's plan, fusion and loss.
    model = tiny_model()
    objs = build_objectives(validate_objectives(objectives))
    assert set(unreachable_parameters(model, objs, MaskingConfig(), SPEC)) == unreachable
    video = unreachable_parameters(model, objs, MaskingConfig(), SPEC, frames=2)
    assert "vision.temporal_embedding" not in video


def test_itc_alone_leaves_the_fusion_unreachable():
    model = tiny_model()
    names = unreachable_parameters(
        model, build_objectives(validate_objectives({"itc": {}})), MaskingConfig(), SPEC
    )
    assert any(n.startswith("fusion.") for n in names) and any(n.startswith("mlm_head.") for n in names)
    assert not any(n.startswith(("vision.blocks", "text.encoder", "itc_")) for n in names)


def test_the_paper_settings_run_on_meta_too():
    # recipes/base.toml's masks (the collator's greedy candidate loop included: a vocabulary with
    # "##" pieces) and gather = "paper" read nothing on the host either.
    paper = MaskingConfig(
        mlm_selection="wwm_collator", scl_text_sampling="with_replacement", patch_count="floor"
    )
    spec = TextSpec(
        SPEC.vocab_size, SPEC.pad_id, SPEC.mask_id, SPEC.special_ids, SPEC.word_start,
        torch.arange(SPEC.vocab_size) % 7 == 0, torch.arange(SPEC.vocab_size) == 9,
    )  # fmt: skip
    objectives = {n: {**t, "gather": "paper"} if n != "itm" else t for n, t in ALL.items()}
    objs = build_objectives(validate_objectives(objectives))
    unreachable = unreachable_parameters(tiny_model(), objs, paper, spec)
    assert set(unreachable) == {"vision.temporal_embedding"}
