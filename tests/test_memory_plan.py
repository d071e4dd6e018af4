"""`benchmarks/memory_plan.py` runs the step on fake tensors (CPU, and CUDA without a GPU): the
accounting it reports holds together, on the tiny recipe, in seconds."""

from __future__ import annotations

import pytest

from scl_cli.config import load_recipe

from .conftest import ROOT, load_benchmark


@pytest.fixture(scope="module")
def plan():
    return load_benchmark("memory_plan")


def tiny(*extra: str):
    return load_recipe(ROOT / "recipes" / "tiny.toml", ["model.text.vocab_size=1000", *extra])


def test_a_full_step_on_fake_cpu_tensors_adds_up(plan):
    out = plan.simulate(tiny(), 4, "cpu", "bf16", backward=True, gpu_kernels=True)
    acts = out["activations_gb"]
    assert all(acts[kind] > 0 for kind in plan.KINDS) and acts["weight_copies"] > 0
    fixed = out["parameters_gb"] + out["optimizer_gb"]
    assert abs(out["optimizer_gb"] / out["gradients_gb"] - 2) < 0.01  # AdamW: two fp32 moments
    assert out["end_of_forward_gb"] == pytest.approx(fixed + sum(acts.values()))
    assert out["peak_gb"] >= out["end_of_forward_gb"] > fixed


@pytest.mark.parametrize("variant", [None, "fusion_casts_once", "vit_checkpointing"])
def test_a_cuda_forward_runs_without_a_gpu(plan, variant):
    out = plan.simulate(tiny(), 4, "cuda", "bf16", backward=False, gpu_kernels=True, variant=variant)
    assert out["forward_ops"] > 0 and out["forward_casts"]["weights"] > 0
    assert all(out["activations_gb"][kind] > 0 for kind in plan.KINDS)
