"""Mixed precision on CPU: the code paths a GPU run takes in bf16 (and fp16 with loss scaling),
exercised here so that a dtype error cannot spend a GPU window.

Each step runs twice on the same batch, weights and random draws: once in fp32 and once under
`torch.autocast("cpu", dtype)` (what `Runtime.autocast` enters for `topology.precision`), and the
losses and gradients are compared. CPU autocast differs from CUDA autocast in one way that matters
here: it leaves LayerNorm, softmax and normalisation in the input dtype, where CUDA runs them in
fp32. The losses therefore cast to fp32 themselves where it matters (`objectives.contrastive`), and
the differences measured here are an upper bound for what a GPU sees.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from scl_cli.config.recipe import MaskingConfig, OptimConfig, TopologyConfig
from scl_cli.objectives import build_objectives, validate_objectives
from scl_cli.objectives.contrastive import similarity, symmetric_contrastive_loss, unit
from scl_cli.reporting import NullReporter
from scl_cli.training.loggers import MetricsLogger
from scl_cli.training.optim import build_optimizer, build_scheduler
from scl_cli.training.runtime import Runtime, resolve_precision
from scl_cli.training.step import TrainStep
from scl_cli.training.trainer import Trainer, TrainState

from .test_step_context import ALL, SPEC, B, make_batch, tiny_model

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}

# How far a 16-bit loss may be from the fp32 loss of the same step, relative to max(1, |fp32 loss|).
# bf16 keeps 8 significant bits: every matmul output, activation and residual of the encoders is
# rounded to ~0.4% (fp16: 11 bits, ~0.05%). The cross-entropy heads (ITM, MLM, VQA, NLVR2, rank)
# average that rounding away: measured <= 3.5e-4 relative in bf16, <= 5.5e-5 in fp16 (5 seeds, every
# test below). The contrastive losses divide cosines by a temperature of 0.03-0.07, and at random
# init all features are nearly parallel (cosines ~0.999), so the few-per-mille error of a bf16
# feature moves them most: ITC <= 1.2e-2, SCL <= 3.1e-3 in bf16 (fp16: 1.5e-3, 4.1e-4). Each bound
# is 2.5-3.7x the worst measured value. A dtype bug moves a loss by far more: the SCL logits rounded
# to bf16 (this code before the fp32 `similarity`) were off by 3e-2, a mask value the dtype cannot
# hold gives inf or nan.
LOSS_TOLERANCE = {
    "bf16": {"itc": 3e-2, "scl_global": 1e-2, "scl_local": 1e-2, "default": 1e-3},
    "fp16": {"itc": 4e-3, "scl_global": 1.5e-3, "scl_local": 1.5e-3, "default": 2e-4},
}
# Relative L2 distance between the 16-bit and fp32 gradients of each part of the model (encoders,
# fusion, heads). The gradient of a nearly degenerate contrastive loss at init is a small difference
# of large terms, so bf16 moves it by several percent: measured <= 8.6% (retrieval, whose ITC term
# dominates), fp16 <= 0.8%. The bounds are 2.3-2.6x that. A missing or doubled loss scale, a part
# that gets no gradient or one computed from a wrongly cast tensor shows as an error of order 1.
GRAD_TOLERANCE = {"bf16": 0.2, "fp16": 0.02}

VQA_ANSWERS = 5
FINETUNING = {
    "vqa": {"vqa": {"answers": VQA_ANSWERS}},
    "nlvr2": {"nlvr2": {}},
    "retrieval": {"rank": {"negatives": 3}, "itc": {"weight": 0.5}, "itm": {"weight": 0.5}},
}


def task_batch(task: str | None, seed: int = 1) -> dict[str, torch.Tensor]:
    """The pre-training batch of `make_batch`, plus the fields a fine-tuning task reads."""
    batch = make_batch()
    g = torch.Generator().manual_seed(seed + 100)
    if task == "vqa":
        batch["question_image"] = torch.tensor([0, 1, 1, 3])  # image 2 has no question, image 1 two
        targets = torch.zeros(B, VQA_ANSWERS)
        targets[torch.arange(B), torch.randint(0, VQA_ANSWERS, (B,), generator=g)] = 1.0
        targets[0, 1] = 0.3  # a soft score
        batch["vqa_targets"] = targets
    if task == "nlvr2":
        batch["images2"] = torch.randn(batch["images"].shape, generator=g)
        batch["labels"] = torch.tensor([0, 1, 1, 0])
    return batch


def run_step(objectives: dict, precision: str, task: str | None = None, seed: int = 0):
    """One training forward and backward of the tiny model; returns (float logs, grads by name, model)."""
    model = tiny_model()
    if seed:
        torch.manual_seed(seed)
        for p in model.parameters():  # another model, same architecture
            p.data.add_(0.02 * torch.randn_like(p))
    objs = build_objectives(validate_objectives(objectives))
    for obj in objs.values():
        obj.setup_model(model)
        obj.init_new_heads(model, {n for n, _ in model.named_parameters()})
    model.train()
    step = TrainStep(model, objs, MaskingConfig(), SPEC, seed=3 + seed)
    torch.manual_seed(11)  # dropout and rank-negative draws; masks come from the step's own seed
    autocast = (
        contextlib.nullcontext() if precision == "fp32" else torch.autocast("cpu", dtype=HALF[precision])
    )
    with autocast:
        logs = step(task_batch(task, seed + 1))
    logs["total"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in logs.items()}, grads, model


def loss_errors(ref: dict[str, float], low: dict[str, float]) -> dict[str, float]:
    """Relative difference of every loss (not the logged extras such as accuracies)."""
    return {k: abs(low[k] - ref[k]) / max(1.0, abs(ref[k])) for k in ref if "/" not in k}


def grad_errors(ref: dict[str, torch.Tensor], low: dict[str, torch.Tensor], model) -> dict[str, float]:
    """Relative L2 distance of the 16-bit gradients from the fp32 ones, per part of the model."""
    parts: dict[str, tuple[float, float]] = {}
    for name, g in ref.items():
        part = model.param_group(name)
        diff, norm = parts.get(part, (0.0, 0.0))
        parts[part] = (diff + float((low[name].float() - g).pow(2).sum()), norm + float(g.pow(2).sum()))
    return {part: math.sqrt(diff / norm) for part, (diff, norm) in parts.items() if norm > 0}


def check_against_fp32(objectives: dict, precision: str, task: str | None = None) -> None:
    ref_logs, ref_grads, _ = run_step(objectives, "fp32", task)
    logs, grads, model = run_step(objectives, precision, task)
    assert logs.keys() == ref_logs.keys() and grads.keys() == ref_grads.keys()
    assert all(math.isfinite(v) for v in logs.values()), logs
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert all(g.dtype == torch.float32 for g in grads.values())  # parameters and grads stay fp32
    tolerance = LOSS_TOLERANCE[precision]
    for key, err in loss_errors(ref_logs, logs).items():
        bound = tolerance.get(key.split("/")[0], tolerance["default"])
        if key == "total":  # the weighted sum: bounded by the sum of its parts' bounds
            bound = sum(tolerance.get(k, tolerance["default"]) for k in objectives)
        assert err <= bound, (
            f"{precision} {key}: {logs[key]} vs fp32 {ref_logs[key]} (rel. {err:.2e} > {bound})"
        )
    for part, err in grad_errors(ref_grads, grads, model).items():
        assert err <= GRAD_TOLERANCE[precision], (
            f"{precision} gradient of the {part} part: rel. error {err:.3f}"
        )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pretraining_step_in_16_bit_matches_fp32(precision):
    # Every objective with its shared passes: batched ViT and RoBERTa variants, both fusion calls.
    check_against_fp32(ALL, precision)


@pytest.mark.parametrize("task", sorted(FINETUNING))
def test_finetuning_step_in_bf16_matches_fp32(task):
    check_against_fp32(FINETUNING[task], "bf16", task)


# ----------------------------------------------------------------------------- where fp32 is kept
def test_contrastive_logits_and_softmax_stay_fp32_under_autocast():
    # Nearly parallel unit features, as at init: at temperature 0.03 the loss lives in the third
    # decimal of the cosines, which a bf16 matmul output (8 bits) would round away.
    torch.manual_seed(0)
    base = torch.randn(1, 32)
    a, b = unit(base + 0.02 * torch.randn(8, 32)), unit(base + 0.02 * torch.randn(8, 32))
    ref = symmetric_contrastive_loss(a, b, 0.03)
    for dtype in HALF.values():
        with torch.autocast("cpu", dtype=dtype):
            assert similarity(a, b, 0.03).dtype == torch.float32
            assert unit(a.to(dtype)).dtype == torch.float32
            got = symmetric_contrastive_loss(a, b, 0.03)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    # What the loss was before (a 16-bit matmul): off by far more than the step tests allow.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = (a @ b.t() / 0.03).float()
    assert (rounded - similarity(a, b, 0.03)).abs().max() > 0.05


@pytest.mark.parametrize("dtype", list(HALF.values()))
def test_invalid_rows_are_masked_out_in_16_bit(dtype):
    # Padding rows of the local SCL text term: neither queries nor candidates, whatever they hold.
    torch.manual_seed(0)
    a, b = unit(torch.randn(6, 16)), unit(torch.randn(6, 16))
    valid = torch.tensor([True, True, False, True, False, True])
    with torch.autocast("cpu", dtype=dtype):
        ref = symmetric_contrastive_loss(a.to(dtype), b.to(dtype), 0.03, valid=valid)
        a2, b2 = a.clone(), b.clone()
        a2[~valid], b2[~valid] = unit(torch.randn(2, 16)), a[0]  # even a copy of a valid row
        a2.requires_grad_(True)
        got = symmetric_contrastive_loss(a2.to(dtype), b2.to(dtype), 0.03, valid=valid)
    assert torch.isfinite(got) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
    got.backward()
    assert torch.isfinite(a2.grad).all() and (a2.grad[~valid] == 0).all()


@pytest.mark.parametrize("dtype", list(HALF.values()))
def test_text_padding_never_leaks_in_16_bit(dtype):
    # Attention masks in RoBERTa and in both fusion directions: what padded positions hold cannot
    # change any real token's output, in 16-bit arithmetic too (a mask value the dtype cannot hold
    # would turn into nan, or into a finite weight on padding).
    model = tiny_model().eval()
    batch = make_batch()
    ids, mask = batch["text_ids"], batch["text_mask"]
    other = ids.clone()
    other[mask == 0] = torch.arange(5, 5 + int((mask == 0).sum()))  # real words where pads were
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        image = model.embed_image(model.encode_image(batch["images"]))
        outs = []
        for text_ids in (ids, other):
            text = model.encode_text(text_ids, mask)
            outs.append((text, model.fuse(model.embed_text(text), mask, image)))
    (text_a, fused_a), (text_b, fused_b) = outs
    real = mask.bool()
    for x in (text_a, fused_a.text, fused_a.image):
        assert torch.isfinite(x).all()
    assert torch.equal(text_a[real], text_b[real])
    assert torch.equal(fused_a.text[real], fused_b.text[real])
    assert torch.equal(fused_a.image, fused_b.image)


# ----------------------------------------------------------------------------- fp16 loss scaling
def make_trainer(runtime: Runtime, objectives: dict, tmp_path) -> tuple[Trainer, torch.nn.Module]:
    model = tiny_model()
    step = TrainStep(model, build_objectives(validate_objectives(objectives)), MaskingConfig(), SPEC, seed=3)
    optim = OptimConfig(lr=1e-3, warmup=0, max_steps=10, batch_size=B, grad_clip=1.0)
    optimizer = build_optimizer(model, optim, model.param_group, "cpu")
    trainer = Trainer(
        step, model, optimizer, build_scheduler(optimizer, optim), runtime, max_steps=10, accumulation=1,
        grad_clip=1.0, log_every=1, checkpoint_every=10, save_fn=lambda *a: None,
        metrics=MetricsLogger(tmp_path, enabled=False), reporter=NullReporter(),
    )  # fmt: skip
    return trainer, model


# torch warns when the scheduler steps after a skipped optimizer step: expected here.
@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before:UserWarning")
def test_fp16_trainer_steps_scale_and_unscale_the_loss_on_cpu(tmp_path):
    # The path of GPUs without bf16 (precision "auto" picks fp16 there): GradScaler("cpu") scales
    # the loss, skips a step whose gradients overflow and halves the scale, and unscales the
    # gradients before clipping. At the initial scale (2^16) some fp16 gradients of the tiny model
    # at init (up to ~80 unscaled, through the ITC projection's LayerNorm) overflow fp16's 65504:
    # the first six steps are skipped (scale 2^10 after them) and move no parameter, as on a GPU.
    objectives = {"itc": {}, "mlm": {}, "scl_global": {}}
    cpu = torch.device("cpu")
    assert resolve_precision(TopologyConfig(precision="fp16"), cpu) == "fp16"
    runtime = Runtime(cpu, "fp16")
    assert runtime.grad_scaler() is not None and Runtime(torch.device("cpu"), "bf16").grad_scaler() is None
    trainer, model = make_trainer(runtime, objectives, tmp_path)
    batch = make_batch()
    skipped = 0
    while True:
        draws, scale = trainer.step_module.draws, trainer.scaler.get_scale()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        torch.manual_seed(11)
        logs = trainer.train_step(iter([batch]), TrainState())
        if trainer.scaler.get_scale() == scale:
            break
        assert trainer.scaler.get_scale() == scale / 2 and skipped < 8
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # step skipped
        skipped += 1
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())  # this one ran
    ref_trainer, ref_model = make_trainer(Runtime(torch.device("cpu"), "fp32"), objectives, tmp_path)
    ref_trainer.step_module.draws = draws  # the same masks as the step that ran
    torch.manual_seed(11)
    ref = ref_trainer.train_step(iter([batch]), TrainState())
    # grad_norm is measured after unscaling: the fp32 norm, not `scale` times it
    assert abs(float(logs["grad_norm"]) / float(ref["grad_norm"]) - 1) < GRAD_TOLERANCE["fp16"]
    assert abs(float(logs["total"]) / float(ref["total"]) - 1) < LOSS_TOLERANCE["fp16"]["itc"]
    assert trainer.training_state(TrainState())["scaler"]["scale"] == scale
