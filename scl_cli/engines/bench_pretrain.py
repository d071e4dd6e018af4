"""Engine of `scl bench pretrain`: time the recipe's full pre-training step.

Reports samples/s, step time, peak memory, the step's FLOPs per sample (forward + backward, counted
by torch.utils.flop_counter on a meta-device copy of the step: exact for any batch, costs no memory
or time), MFU against the device's bf16 peak, and — with `data=True`, batches from the recipe's own
loader instead of one synthetic batch — the fraction of the time spent waiting for data.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from scl_cli.config import Recipe
from scl_cli.data.tokenizer import load_tokenizer
from scl_cli.model import SCLModel
from scl_cli.training.estimate import step_flops, synthetic_batch, synthetic_spec, vocab_and_spec
from scl_cli.training.optim import build_optimizer
from scl_cli.training.runtime import Runtime, seed_everything, setup_runtime
from scl_cli.training.step import build_train_step

__all__ = ["BenchReport", "bench_pretrain", "step_flops", "synthetic_batch", "synthetic_spec"]

# Dense bf16 peaks in FLOP/s that MFU is reported against. H100/H200: the bf16 matmul rate this
# project measured on an H100 SXM (790 TFLOP/s; the data sheet says 989). Others: data sheets.
# Pass --peak-tflops for anything else, or to use another reference.
PEAK_BF16_FLOPS = {"H100": 790e12, "H200": 790e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


@dataclass
class BenchReport:
    device: str
    precision: str
    batch: int
    steps: int
    samples_per_s: float | None
    step_time_s: float | None
    peak_memory_gb: float | None
    flops_per_sample: float
    achieved_tflops: float | None
    mfu: float | None
    parameters: int
    compile: bool = False
    activation_checkpointing: bool = False
    data: str = "synthetic"  # "synthetic" (one batch, reused) or "loader" (the recipe's data)
    data_wait_fraction: float | None = None  # share of the timed wall time blocked in next(loader)
    peak_tflops: float | None = None
    gpu_busy_fraction: float | None = None  # kernel time / wall time of the profiled steps (--profile)

    def rows(self) -> list[list[str]]:
        def maybe(value, fmt: str) -> str:
            return "n/a" if value is None else fmt.format(value)

        mfu = "n/a (pass --peak-tflops)" if self.mfu is None else f"{100 * self.mfu:.1f}%"
        options = ", ".join(
            name for name, on in (("compile", self.compile), ("activation checkpointing",
                                  self.activation_checkpointing)) if on
        )  # fmt: skip
        rows = [
            ["device", f"{self.device} ({self.precision}{', ' + options if options else ''})"],
            ["parameters", f"{self.parameters / 1e6:.1f} M"],
            ["batch per step", str(self.batch)],
            ["samples/s", maybe(self.samples_per_s, "{:.2f}")],
            ["step time", maybe(None if self.step_time_s is None else 1000 * self.step_time_s, "{:.1f} ms")],
            ["peak memory", maybe(self.peak_memory_gb, "{:.2f} GB")],
            ["GFLOP per sample (fwd+bwd)", f"{self.flops_per_sample / 1e9:.2f}"],
            ["achieved TFLOP/s", maybe(self.achieved_tflops, "{:.3f}")],
            ["MFU", mfu],
        ]
        if self.data == "loader":
            rows.append(["waiting for data", maybe(None if self.data_wait_fraction is None
                                                   else 100 * self.data_wait_fraction, "{:.1f}%")])  # fmt: skip
        return rows

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def _device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


_vocab_and_spec = vocab_and_spec  # the name benchmarks/sync_check.py imports


def _loader_batches(recipe: Recipe, tokenizer, batch: int, runtime: Runtime):
    from scl_cli.data.stream import build_train_loader

    if tokenizer is None:
        tokenizer = load_tokenizer(recipe.model.text.tokenizer, recipe.data.root, recipe.data.train[0])
    data = recipe.data
    loader = build_train_loader(
        data_root=data.root, datasets=data.train, weights=data.weights, split=data.split,
        tokenizer=tokenizer, image_size=recipe.model.vision.image_size, max_len=recipe.model.text.max_len,
        batch_size=batch, seed=recipe.optim.seed, num_workers=data.num_workers,
        shuffle_buffer=data.shuffle_buffer, augment=data.augment, crop_min_scale=data.crop_min_scale,
        pin_memory=runtime.device.type == "cuda", pad_to_multiple=data.pad_to_multiple,
    )  # fmt: skip
    return iter(loader)


def bench_pretrain(
    recipe: Recipe,
    steps: int = 5,
    warmup: int = 2,
    batch: int | None = None,
    peak_tflops: float | None = None,
    data: bool = False,
    compile: bool | None = None,
    profile: Path | None = None,
) -> BenchReport:
    """Time `steps` optimizer steps (after `warmup` untimed ones) of the recipe's step at `batch`
    per device. `steps=0` counts FLOPs only. `data`: read batches from the recipe's loader and
    report the share of time spent waiting for them. `compile` overrides `topology.compile`.
    `profile`: write a torch.profiler trace (`profile.json`) and its op table (`profile.txt`)."""
    if compile is not None:
        recipe = recipe.model_copy(
            update={"topology": recipe.topology.model_copy(update={"compile": compile})}
        )
    runtime = setup_runtime(recipe.topology)
    seed_everything(recipe.optim.seed)
    vocab, spec, pad, tokenizer = _vocab_and_spec(recipe)
    batch = batch or recipe.micro_batch()
    flops_per_sample = step_flops(recipe, vocab, pad, spec, batch) / batch
    peak = peak_tflops * 1e12 if peak_tflops else _device_peak(runtime.device)
    model = SCLModel(recipe.model, vocab, pad)
    topo = recipe.topology
    report = BenchReport(
        device=torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else "cpu",
        precision=runtime.precision, batch=batch, steps=steps, samples_per_s=None, step_time_s=None,
        peak_memory_gb=None, flops_per_sample=flops_per_sample, achieved_tflops=None, mfu=None,
        parameters=sum(p.numel() for p in model.parameters()), compile=topo.compile,
        activation_checkpointing=topo.activation_checkpointing, data="loader" if data else "synthetic",
        peak_tflops=None if peak is None else peak / 1e12,
    )  # fmt: skip
    if steps == 0:
        return report

    step_module = build_train_step(recipe, model, spec, runtime)
    optimizer = build_optimizer(model, recipe.optim, model.param_group, runtime.device.type)
    fixed = synthetic_batch(recipe, batch, vocab, runtime.device)
    batches = _loader_batches(recipe, tokenizer, batch, runtime) if data else None
    waited = 0.0

    def one_step() -> None:
        nonlocal waited
        current = fixed
        if batches is not None:
            start = time.perf_counter()
            current = next(batches)
            waited += time.perf_counter() - start
            current = {k: v.to(runtime.device, non_blocking=True) for k, v in current.items() if k != "index"}
        with runtime.autocast():
            total = step_module(current)["total"]
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if runtime.device.type == "cuda":
            torch.cuda.synchronize(runtime.device)

    for _ in range(warmup):
        one_step()
    sync()
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    waited = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    peak_memory = _peak_memory_gb(runtime.device)
    if profile is not None:
        # Profiled steps come after the timed ones: the profiler's own overhead stays out of the figures.
        profiler = _profiler(runtime)
        profiled = min(steps, 3)
        profiler.start()
        start = time.perf_counter()
        for _ in range(profiled):
            one_step()
        sync()
        wall = time.perf_counter() - start
        profiler.stop()
        report.gpu_busy_fraction = _write_profile(profiler, Path(profile), runtime, wall)
    samples_per_s = batch / seconds
    achieved = flops_per_sample * samples_per_s
    report.samples_per_s = samples_per_s
    report.step_time_s = seconds
    report.peak_memory_gb = peak_memory
    report.achieved_tflops = achieved / 1e12
    report.mfu = achieved / peak if peak else None
    report.data_wait_fraction = waited / (seconds * steps) if data else None
    return report


def _profiler(runtime: Runtime):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runtime.device.type == "cuda" else [])
    return profile(activities=activities, record_shapes=False)


def _write_profile(profiler, out: Path, runtime: Runtime, wall_s: float) -> float | None:
    """Write the trace and op table; return the share of the wall time the GPU spent in kernels."""
    out.mkdir(parents=True, exist_ok=True)
    profiler.export_chrome_trace(str(out / "profile.json"))
    cuda = runtime.device.type == "cuda"
    averages = profiler.key_averages()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = averages.table(sort_by=key, row_limit=40)
    # The step's own ranges (`scl:` record_function labels): host and device time per pass.
    ranges = sorted(
        (e for e in averages if e.key.startswith("scl:")), key=lambda e: e.cpu_time_total, reverse=True
    )
    lines = [f"{'range':<52} {'host ms':>9} {'device ms':>10}  calls"] + [
        f"{e.key[:52]:<52} {e.cpu_time_total / 1e3 / max(e.count, 1):9.2f} "
        f"{getattr(e, 'device_time_total', 0) / 1e3 / max(e.count, 1):10.2f}  {e.count}"
        for e in ranges
    ]
    busy = None
    if cuda:
        kernel_us = sum(
            getattr(e, "self_device_time_total", 0) for e in averages if not e.key.startswith("scl:")
        )
        busy = kernel_us / 1e6 / wall_s
        lines.append(f"\nGPU busy: {100 * busy:.1f}% of {wall_s * 1e3:.0f} ms wall (kernel time / wall time)")
    (out / "profile.txt").write_text(table + "\n\nscl ranges (per call)\n" + "\n".join(lines) + "\n")
    return busy
