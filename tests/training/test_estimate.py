"""What a run costs before it starts: `scl pretrain --dry-run` counts the FLOPs `scl bench` counts,
its memory estimate is close to what the CPU allocator measures, and it writes nothing."""

from __future__ import annotations

import torch

from scl_cli.config import load_recipe
from scl_cli.engines.bench_pretrain import bench_pretrain
from scl_cli.engines.dry_run import dry_run, duration
from scl_cli.model import SCLModel
from scl_cli.training.estimate import estimate_memory, synthetic_batch, vocab_and_spec
from scl_cli.training.freeze import freeze_unreachable
from scl_cli.training.optim import build_optimizer
from scl_cli.training.runtime import Runtime
from scl_cli.training.step import build_train_step

from ..conftest import RECIPES, run_scl


def tiny(shapes_root, tmp_path, *sets: str):
    return load_recipe(RECIPES / "tiny.toml", [f'data.root="{shapes_root}"', f'output.dir="{tmp_path / "run"}"',
                                               "topology.device=cpu", *sets])  # fmt: skip


def test_dry_run_flops_equal_bench_and_the_projection_adds_up(shapes_root, tmp_path):
    recipe = tiny(shapes_root, tmp_path, "optim.batch_size=16", "optim.micro_batch_size=8")
    report = dry_run(recipe, samples_per_s=4.0, gpu_hour_price=2.0)
    bench = bench_pretrain(recipe, steps=0)
    assert report.flops_per_sample == bench.flops_per_sample
    assert report.parameters == bench.parameters
    assert (report.micro_batch, report.accumulation) == (8, 2)
    steps = recipe.optim.max_steps
    assert report.samples == steps * 16 and report.wall_seconds == steps * 16 / 4.0
    assert report.cost == report.gpu_hours * 2.0
    assert not (tmp_path / "run").exists()


def test_dry_run_measures_a_few_real_steps(shapes_root, tmp_path):
    report = dry_run(tiny(shapes_root, tmp_path, "optim.batch_size=4"), measure=True, measure_steps=1)
    assert report.samples_per_s > 0 and "measured here" in report.throughput_source
    assert not (tmp_path / "run").exists()


def _measured_peak(recipe, batch_size: int) -> int:
    """Bytes the CPU allocator holds at the peak of the second training step (forward, backward,
    AdamW), counting parameters and optimizer state allocated before it."""
    vocab, spec, pad, _ = vocab_and_spec(recipe)
    runtime = Runtime(torch.device("cpu"), "fp32")
    torch.manual_seed(0)
    model = SCLModel(recipe.model, vocab, pad)
    step = build_train_step(recipe, model, spec, runtime)
    freeze_unreachable(model, step.objectives, recipe.masking, step.spec)
    optimizer = build_optimizer(model, recipe.optim, model.param_group, "cpu")
    batch = synthetic_batch(recipe, batch_size, vocab, runtime.device)

    def one_step() -> None:
        step(batch)["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step()  # AdamW allocates its state
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    held += sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if torch.is_tensor(v))  # fmt: skip
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        one_step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return held + peak


def test_memory_estimate_is_within_20_percent_of_the_measured_cpu_peak(shapes_root, tmp_path):
    recipe = tiny(shapes_root, tmp_path, "optim.batch_size=8")
    vocab, spec, pad, _ = vocab_and_spec(recipe)
    estimate = estimate_memory(recipe, vocab, pad, spec, 8, "fp32")
    measured = _measured_peak(recipe, 8)
    assert abs(estimate.total - measured) <= 0.2 * measured, (estimate, measured)
    assert (
        estimate.parameters + estimate.gradients + estimate.optimizer + estimate.activations == estimate.total
    )


def test_16_bit_and_activation_checkpointing_are_estimated_smaller(shapes_root, tmp_path):
    recipe = tiny(shapes_root, tmp_path, "optim.batch_size=8")
    vocab, spec, pad, _ = vocab_and_spec(recipe)
    fp32 = estimate_memory(recipe, vocab, pad, spec, 8, "fp32")
    bf16 = estimate_memory(recipe, vocab, pad, spec, 8, "bf16")
    assert bf16.parameters == fp32.parameters and bf16.activations < 0.75 * fp32.activations
    checkpointed = tiny(shapes_root, tmp_path, "optim.batch_size=8", "topology.activation_checkpointing=true")
    recomputed = estimate_memory(checkpointed, vocab, pad, spec, 8, "fp32")
    assert recomputed.activations < 0.5 * fp32.activations


def test_dry_run_cli_prints_the_table_and_writes_nothing(shapes_root, tmp_path):
    run = tmp_path / "run"
    out = run_scl("pretrain", str(RECIPES / "tiny.toml"), "--dry-run", "--samples-per-s", "40",
                  "--gpu-hour-price", "3", "--set", f'data.root="{shapes_root}"', "--set", f'output.dir="{run}"',
                  "--set", "topology.device=cpu")  # fmt: skip
    assert out.returncode == 0, out.stderr
    for row in ("GFLOP per sample", "memory per device", "wall time", "device-hours", "cost"):
        assert row in out.stdout, row
    assert not run.exists()
    misuse = run_scl("pretrain", str(RECIPES / "tiny.toml"), "--measure")
    assert misuse.returncode == 2 and "--dry-run" in misuse.stderr


def test_duration_reads_like_a_person_would_say_it():
    assert duration(45) == "0 min 45 s"
    assert duration(3 * 3600 + 120) == "3 h 2 min"
    assert duration(4 * 86400 + 14 * 3600 + 59) == "4 d 14 h"


def test_an_estimate_leaves_no_fake_tensor_behind(shapes_root, tmp_path):
    """The estimate replays the step on fake CPU tensors; a per-device cache (the pixel statistics)
    once kept the fake ones, and every later real CPU step then computed on fakes."""
    from scl_cli.model.preprocess import to_model_input

    recipe = tiny(shapes_root, tmp_path, "optim.batch_size=2")
    vocab, spec, pad, _ = vocab_and_spec(recipe)
    estimate_memory(recipe, vocab, pad, spec, 2, "fp32")
    out = to_model_input(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    assert type(out) is torch.Tensor and out.sum().item() < 0
