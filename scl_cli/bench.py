"""Engine of `scl bench pretrain`: time the recipe's full pre-training step on synthetic batches.

Reports samples/s, step time, peak memory, the step's FLOPs per sample (forward + backward,
counted by torch.utils.flop_counter) and MFU against the device's bf16 peak.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from scl_cli.data.tokenizer import load_tokenizer
from scl_cli.errors import DataError, UsageError
from scl_cli.model import SCLModel
from scl_cli.pretrain import make_step_module, text_spec
from scl_cli.recipe import Recipe
from scl_cli.training.masking import TextSpec
from scl_cli.training.optim import build_optimizer
from scl_cli.training.runtime import seed_everything, setup_runtime

# Dense bf16 tensor-core peaks from the vendors' data sheets, in FLOP/s.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

SPECIAL_TOKENS = 5  # <s> <pad> </s> <unk> <mask>, as the shapes tokenizer lays them out


@dataclass
class BenchReport:
    device: str
    precision: str
    batch: int
    steps: int
    samples_per_s: float
    step_time_s: float
    peak_memory_gb: float
    flops_per_sample: float
    achieved_tflops: float
    mfu: float | None
    parameters: int

    def rows(self) -> list[list[str]]:
        mfu = "n/a (pass --peak-tflops)" if self.mfu is None else f"{100 * self.mfu:.1f}%"
        return [
            ["device", f"{self.device} ({self.precision})"],
            ["parameters", f"{self.parameters / 1e6:.1f} M"],
            ["batch per step", str(self.batch)],
            ["samples/s", f"{self.samples_per_s:.2f}"],
            ["step time", f"{1000 * self.step_time_s:.1f} ms"],
            ["peak memory", f"{self.peak_memory_gb:.2f} GB"],
            ["GFLOP per sample (fwd+bwd)", f"{self.flops_per_sample / 1e9:.2f}"],
            ["achieved TFLOP/s", f"{self.achieved_tflops:.3f}"],
            ["MFU", mfu],
        ]

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def synthetic_spec(vocab_size: int) -> TextSpec:
    """Masking needs only special ids and word starts; every other token starts a word here."""
    word_start = torch.ones(vocab_size, dtype=torch.bool)
    return TextSpec(vocab_size, 1, 4, torch.arange(SPECIAL_TOKENS), word_start)


def synthetic_batch(recipe: Recipe, batch: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    v = recipe.model.vision
    L = recipe.model.text.max_len
    ids = torch.randint(SPECIAL_TOKENS, vocab, (batch, L))
    lengths = torch.randint(L // 2, L + 1, (batch,))
    pos = torch.arange(L)[None, :]
    ids[:, 0] = 0
    ids = torch.where(pos == lengths[:, None] - 1, torch.full_like(ids, 2), ids)
    mask = (pos < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, 1))
    images = torch.randn(batch, 1, 3, v.image_size, v.image_size)
    return {k: t.to(device) for k, t in {"images": images, "text_ids": ids, "text_mask": mask}.items()}


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def _device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def bench_pretrain(
    recipe: Recipe,
    steps: int = 5,
    warmup: int = 2,
    batch: int | None = None,
    peak_tflops: float | None = None,
) -> BenchReport:
    runtime = setup_runtime(recipe.topology)
    seed_everything(recipe.optim.seed)
    vocab = recipe.model.text.vocab_size
    if vocab is None:
        try:
            tok = load_tokenizer(recipe.model.text.tokenizer, recipe.data.root, recipe.data.train[0])
        except DataError as err:
            raise UsageError(
                f"{err} (or set model.text.vocab_size to benchmark without a tokenizer)"
            ) from None
        vocab, spec, pad = tok.vocab_size, text_spec(tok, tok.vocab_size), tok.pad_id
    else:
        spec, pad = synthetic_spec(vocab), 1
    model = SCLModel.from_recipe_model(recipe.model, vocab, pad)
    step_module = make_step_module(recipe, model, spec, runtime)
    optimizer = build_optimizer(model, recipe.optim, model.param_group, runtime.device.type)
    batch = batch or recipe.micro_batch()
    data = synthetic_batch(recipe, batch, vocab, runtime.device)

    def one_step() -> None:
        with runtime.autocast():
            total = step_module(data)["total"]
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if runtime.device.type == "cuda":
            torch.cuda.synchronize(runtime.device)

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with runtime.autocast():
            total = step_module(data)["total"]
        total.backward()
    optimizer.zero_grad(set_to_none=True)
    flops_per_sample = counter.get_total_flops() / batch

    for _ in range(warmup):
        one_step()
    sync()
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    samples_per_s = batch / seconds
    achieved = flops_per_sample * samples_per_s
    peak = peak_tflops * 1e12 if peak_tflops else _device_peak(runtime.device)
    return BenchReport(
        device=torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else "cpu",
        precision=runtime.precision,
        batch=batch,
        steps=steps,
        samples_per_s=samples_per_s,
        step_time_s=seconds,
        peak_memory_gb=_peak_memory_gb(runtime.device),
        flops_per_sample=flops_per_sample,
        achieved_tflops=achieved / 1e12,
        mfu=achieved / peak if peak else None,
        parameters=sum(p.numel() for p in model.parameters()),
    )
