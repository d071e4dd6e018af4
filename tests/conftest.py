"""Shared fixtures: one small shapes data set per test session, and a runner for the real CLI."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_benchmark(name: str) -> ModuleType:
    """`benchmarks/NAME.py` (scripts, not a package) imported as module NAME."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A data root holding a small `shapes` data set (80 images and 40 clips, 16 per shard)."""
    from scl_cli.engines.prepare import prepare_shapes

    root = tmp_path_factory.mktemp("data")
    prepare_shapes(root, images=80, seed=0, shard_size=16, workers=1, clips=40)
    return root


def run_scl(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `scl ARGS` in a fresh interpreter, as a user would, capturing output."""
    return subprocess.run(
        [sys.executable, "-m", "scl_cli.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "CI": "1", **(env or {})},
    )


def tiny_overrides(root: Path, run: Path, steps: int = 4, **extra: object) -> list[str]:
    """--set flags for a fast tiny pre-training run on the session's shapes data."""
    sets = {
        "data.root": f'"{root}"',
        "output.dir": f'"{run}"',
        "optim.max_steps": steps,
        "optim.batch_size": 8,
        "log.every": 1,
        "log.tensorboard": "false",
        "output.checkpoint_every": 2,
        "data.num_workers": 1,
        "eval.every": 0,  # the recipe's in-training evaluation is tested on its own (tests/training)
        **extra,
    }
    out: list[str] = []
    for key, value in sets.items():
        out += ["--set", f"{key}={value}"]
    return out


def free_port() -> int:
    """A TCP port nobody listens on now, for a test's process group or torchrun rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_gloo(worker, args: tuple, world: int, out_dir: Path) -> None:
    """`worker(rank, port, *args)` in `world` processes (`mp.spawn`) for the gloo tests, whose workers
    save `rank{r}.pt` in `out_dir` once their collectives are done. A worker has been seen to abort
    while gloo tears down ("terminate called without an active exception", SIGABRT) after both saved
    their results; that is not what these tests check, so it is let through when every rank's file
    loads. Any other failure, or an abort before the results are saved, fails the test."""
    import torch
    import torch.multiprocessing as mp

    try:
        mp.spawn(worker, args=(free_port(), *args), nprocs=world, join=True)
    except mp.ProcessExitedException as err:
        saved = [Path(out_dir) / f"rank{r}.pt" for r in range(world)]
        if err.signal_name != "SIGABRT" or not all(p.is_file() for p in saved):
            raise
        for path in saved:
            torch.load(path, weights_only=True)  # a file cut short by the abort fails here
