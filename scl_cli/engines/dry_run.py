"""Engine of `scl pretrain RECIPE --dry-run`: what a run would cost, before it starts.

Resolves the recipe, builds the model on the meta device and reports parameters, FLOPs per sample
(the same count as `scl bench pretrain --steps 0`), the estimated memory per device at the
micro-batch (`training.estimate`), and a projection of steps, samples, wall time, GPU-hours and
cost at a throughput measured here (`measure`: a few real steps of the recipe's step on this
device, synthetic data) or given (`samples_per_s`, per device, e.g. from `scl bench pretrain` on
the target GPU). Starts no process and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scl_cli.config import Recipe
from scl_cli.data.manifests import source_media
from scl_cli.errors import SclError, UsageError
from scl_cli.model import SCLModel
from scl_cli.reporting import NullReporter, Reporter
from scl_cli.training.auto_batch import MARGIN, cache_key, candidates, device_description, read_cache
from scl_cli.training.estimate import (
    MemoryEstimate,
    estimate_memory,
    optimizer_step_fn,
    step_flops,
    synthetic_batch,
    time_steps,
    vocab_and_spec,
)
from scl_cli.training.optim import build_optimizer
from scl_cli.training.runtime import Runtime, resolve_device, resolve_precision, seed_everything
from scl_cli.training.step import build_train_step


@dataclass
class DryRunReport:
    device: str  # what one device is: "cpu", "NVIDIA H200 (139.8 GB)"
    precision: str
    world: int
    micro_batch: int
    accumulation: int
    global_batch: int
    parameters: int
    trainable: int
    flops_per_sample: float
    memory: MemoryEstimate
    device_memory: int | None  # bytes per device, when known (CUDA)
    steps: int
    samples: int
    samples_per_s: float | None = None  # per device
    throughput_source: str = ""  # "measured here (...)" or "given (--samples-per-s)"
    gpu_hour_price: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def wall_seconds(self) -> float | None:
        if not self.samples_per_s:
            return None
        return self.samples / (self.samples_per_s * self.world)

    @property
    def gpu_hours(self) -> float | None:
        wall = self.wall_seconds
        return None if wall is None else wall / 3600 * self.world

    @property
    def cost(self) -> float | None:
        hours = self.gpu_hours
        return None if hours is None or self.gpu_hour_price is None else hours * self.gpu_hour_price

    def rows(self) -> list[list[str]]:
        total = self.memory.total
        capacity = ""
        if self.device_memory:
            verdict = "fits" if total <= (1 - MARGIN) * self.device_memory else "DOES NOT FIT"
            capacity = f" of {self.device_memory / 1e9:.1f} GB: {verdict}"
        rows = [
            ["device", f"{self.world} x {self.device} ({self.precision})"],
            ["parameters", f"{self.parameters / 1e6:.1f} M ({self.trainable / 1e6:.1f} M trained)"],
            [
                "batch",
                f"{self.micro_batch} per device x {self.accumulation} accumulation x {self.world} "
                f"device(s) = {self.global_batch}",
            ],  # fmt: skip
            ["GFLOP per sample (fwd+bwd)", f"{self.flops_per_sample / 1e9:.2f}"],
            *[[f"memory: {name}", value] for name, value in self.memory.rows()[:-1]],
            ["memory per device (estimate)", f"{self.memory.rows()[-1][1]}{capacity}"],
            ["steps", f"{self.steps:,}"],
            ["samples", f"{self.samples:,}"],
        ]
        if self.samples_per_s is None:
            rows.append(["throughput", "pass --measure or --samples-per-s for time and cost"])
        else:
            rows += [
                ["throughput", f"{self.samples_per_s:.2f} samples/s per device, {self.throughput_source}"],
                ["wall time", duration(self.wall_seconds or 0.0)],
                ["GPU-hours" if "cpu" not in self.device else "device-hours", f"{self.gpu_hours:,.1f}"],
            ]
            if self.cost is not None:
                rows.append(["cost", f"{self.cost:,.2f} at {self.gpu_hour_price:g} per GPU-hour"])
        return rows


def duration(seconds: float) -> str:
    """3 d 4 h, 5 h 12 min, 7 min 30 s."""
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"


def _frames(recipe: Recipe, notes: list[str]) -> int:
    try:
        media = source_media(recipe.data.root, recipe.data.train, recipe.data.split)
    except SclError:
        notes.append("data sets not readable here: estimated for still images (see `scl doctor`)")
        return 1
    return recipe.data.num_frames if "video" in media else 1


def _auto_micro(
    recipe: Recipe, device: torch.device, capacity: int | None, estimate, notes: list[str]
) -> int:
    """The micro-batch "auto" would give: the cached probe result, else the largest candidate whose
    estimate fits (CUDA), else the default."""
    per_device = recipe.optim.batch_size // recipe.topology.world_size
    if device.type != "cuda" or capacity is None:
        notes.append(f"optim.micro_batch_size = 'auto' off CUDA: the default ({per_device})")
        return per_device
    cached = read_cache(recipe.output.dir, cache_key(recipe, device_description(device)))
    if cached is not None:
        notes.append(f"optim.micro_batch_size = 'auto': {cached}, probed earlier on this device")
        return cached
    fitting = [m for m in candidates(per_device) if estimate(m).total <= (1 - MARGIN) * capacity]
    best = fitting[-1] if fitting else 1
    notes.append(f"optim.micro_batch_size = 'auto': about {best} by this estimate (the run probes it)")
    return best


def dry_run(
    recipe: Recipe,
    measure: bool = False,
    samples_per_s: float | None = None,
    gpu_hour_price: float | None = None,
    measure_steps: int = 3,
    reporter: Reporter | None = None,
) -> DryRunReport:
    """The report above; `measure` times `measure_steps` real steps on this device."""
    reporter = reporter or NullReporter()
    if measure and samples_per_s is not None:
        raise UsageError("--measure and --samples-per-s both give a throughput: pass one")
    notes: list[str] = []
    topo = recipe.topology
    device = resolve_device(topo)
    precision = resolve_precision(topo, device)
    if device.type == "cpu" and topo.device == "auto" and topo.precision == "auto":
        notes.append("no CUDA device here: planned for CPU in fp32 (--set topology.precision=bf16 to "
                     "estimate a GPU's memory)")  # fmt: skip
    capacity = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    seed_everything(recipe.optim.seed)  # the synthetic batch of the FLOP count, as `scl bench` draws it
    vocab, spec, pad, _ = vocab_and_spec(recipe)
    frames = _frames(recipe, notes)

    def estimate(micro: int, accumulating: bool = True) -> MemoryEstimate:
        return estimate_memory(recipe, vocab, pad, spec, micro, precision, frames,
                               fused_optimizer=device.type == "cuda", accumulating=accumulating)  # fmt: skip

    per_device = recipe.optim.batch_size // topo.world_size
    if recipe.optim.micro_batch_size == "auto":
        micro = _auto_micro(recipe, device, capacity, estimate, notes)
    else:
        micro = recipe.micro_batch()
    accumulation = per_device // micro
    flops = step_flops(recipe, vocab, pad, spec, micro) / micro
    memory = estimate(micro, accumulating=accumulation > 1)
    with torch.device("meta"):
        parameters = SCLModel(recipe.model, vocab, pad).num_parameters()
    name = (
        "cpu" if device.type == "cpu" else f"{torch.cuda.get_device_name(device)} ({capacity / 1e9:.1f} GB)"
    )
    report = DryRunReport(
        device=name, precision=precision, world=topo.world_size, micro_batch=micro, accumulation=accumulation,
        global_batch=recipe.optim.batch_size, parameters=parameters, trainable=memory.trainable,
        flops_per_sample=flops, memory=memory, device_memory=capacity, steps=recipe.optim.max_steps,
        samples=recipe.optim.max_steps * recipe.optim.batch_size, gpu_hour_price=gpu_hour_price, notes=notes,
    )  # fmt: skip
    if samples_per_s is not None:
        report.samples_per_s, report.throughput_source = samples_per_s, "given (--samples-per-s)"
    elif measure:
        reporter.info(f"measuring {measure_steps} steps at micro-batch {micro} on {name} ...")
        seconds = _measure(recipe, Runtime(device, precision), vocab, pad, spec, micro, frames, measure_steps)
        report.samples_per_s = micro / seconds
        report.throughput_source = (f"measured here ({measure_steps} steps, synthetic data, no loader or "
                                    "gradient all-reduce)")  # fmt: skip
    if topo.world_size > 1 and report.samples_per_s is not None:
        notes.append(f"projection assumes linear scaling over {topo.world_size} devices")
    return report


def _measure(recipe: Recipe, runtime: Runtime, vocab: int, pad: int, spec, micro: int, frames: int,
             steps: int) -> float:  # fmt: skip
    """Seconds per micro-batch step (forward, backward, AdamW) of the real step on this device."""
    model = SCLModel(recipe.model, vocab, pad)
    step = build_train_step(recipe, model, spec, runtime)
    optimizer = build_optimizer(model, recipe.optim, model.param_group, runtime.device.type)
    batch = synthetic_batch(recipe, micro, vocab, runtime.device, frames)
    seconds, _ = time_steps(
        optimizer_step_fn(step, optimizer, batch, runtime), runtime.device, steps, warmup=1
    )
    return seconds
