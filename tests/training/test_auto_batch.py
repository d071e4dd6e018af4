"""`optim.micro_batch_size = "auto"`: a binary search over the divisors of the per-device batch for
the largest that fits (the CUDA probe's verdict is injected here), cached per recipe and device in
the output folder; on CPU the recipe's default."""

from __future__ import annotations

import json

import pytest
import torch

from scl_cli.config import load_recipe
from scl_cli.engines.pretrain import pretrain
from scl_cli.errors import UsageError
from scl_cli.training.auto_batch import CACHE_FILE, candidates, largest_fitting, resolve_micro_batch
from scl_cli.training.runtime import Runtime

from ..conftest import RECIPES

GPU = {"name": "Pretend GPU", "memory": 80 * 2**30, "torch": torch.__version__}


def auto(tmp_path, *sets: str):
    return load_recipe(RECIPES / "tiny.toml", ["optim.micro_batch_size=auto", f'output.dir="{tmp_path / "run"}"',
                                               *sets])  # fmt: skip


def test_binary_search_finds_the_largest_divisor_that_fits():
    assert candidates(24) == [1, 2, 3, 4, 6, 8, 12, 24]
    asked: list[int] = []

    def fits(m: int) -> bool:
        asked.append(m)
        return m <= 10

    assert largest_fitting(candidates(24), fits) == 8
    assert len(asked) <= 4  # log2 of the candidates, not all of them
    assert largest_fitting(candidates(24), lambda m: False) is None


def test_auto_is_probed_once_then_read_from_the_cache(tmp_path):
    recipe = auto(tmp_path, "optim.batch_size=64")
    cpu = Runtime(torch.device("cpu"), "fp32")
    got = resolve_micro_batch(recipe, cpu, tmp_path / "run", probe=lambda m: m <= 20, device=GPU)
    assert got == 16 and recipe.optim.micro_batch_size == 16 and recipe.accumulation_steps() == 4
    cached = json.loads((tmp_path / "run" / CACHE_FILE).read_text())
    assert [entry["micro_batch_size"] for entry in cached.values()] == [16]

    def no_probe(m: int) -> bool:
        raise AssertionError("probed again despite the cache")

    again = auto(tmp_path, "optim.batch_size=64")
    assert resolve_micro_batch(again, cpu, tmp_path / "run", probe=no_probe, device=GPU) == 16
    other_gpu = {**GPU, "name": "Smaller GPU"}
    assert resolve_micro_batch(auto(tmp_path, "optim.batch_size=64"), cpu, tmp_path / "run",
                               probe=lambda m: m <= 4, device=other_gpu) == 4  # fmt: skip
    with pytest.raises(UsageError, match="activation_checkpointing"):
        resolve_micro_batch(auto(tmp_path, "optim.batch_size=64", "model.vision.layers=2"), cpu,
                            tmp_path / "run", probe=lambda m: False, device=GPU)  # fmt: skip


def test_auto_on_cpu_keeps_the_default_and_trains(shapes_root, tmp_path):
    recipe = auto(tmp_path, f'data.root="{shapes_root}"', "optim.batch_size=4", "optim.max_steps=1",
                  "data.num_workers=0", "log.loggers=[]", "topology.device=cpu")  # fmt: skip
    result = pretrain(recipe)
    assert result.steps == 1 and recipe.optim.micro_batch_size == 4
    assert not (tmp_path / "run" / CACHE_FILE).exists()
