"""`scl pretrain` with two processes, launched by scl itself through torchrun (CPU, gloo): rank 0
writes, a run killed after a checkpoint and resumed ends on the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from safetensors.torch import load_file

from scl_cli.config import load_recipe
from scl_cli.engines.pretrain import pretrain
from scl_cli.errors import DataError
from scl_cli.io.checkpoints import list_checkpoints
from scl_cli.training import launch

from .conftest import RECIPES, ROOT, run_scl, tiny_overrides

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not dist.is_available(), reason="gloo test runs on Linux"
)
STEPS = 6
TWO_CPU_PROCESSES = {"topology.devices_per_node": 2, "topology.device": '"cpu"', "data.num_workers": 0}


def _weights(run: Path) -> dict:
    return load_file(str(list_checkpoints(run)[-1] / "model.safetensors"))


def test_two_processes_resume_exactly_after_a_kill(shapes_root: Path, tmp_path: Path) -> None:
    args = ["pretrain", str(RECIPES / "tiny.toml")]
    straight = tmp_path / "straight"
    proc = run_scl(*args, *tiny_overrides(shapes_root, straight, steps=STEPS, **TWO_CPU_PROCESSES))
    assert proc.returncode == 0, proc.stderr
    assert "launching torchrun" in proc.stderr and "finished step 6" in proc.stderr
    lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))  # rank 0 alone writes metrics
    assert [p.name for p in list_checkpoints(straight)] == ["step-4", "step-6"]  # keep_last 2

    killed = tmp_path / "killed"
    sets = tiny_overrides(shapes_root, killed, steps=STEPS, **TWO_CPU_PROCESSES)
    runner = subprocess.Popen(
        [sys.executable, "-m", "scl_cli.cli", *args, *sets],
        cwd=ROOT,
        env={**os.environ, "CI": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while (
        not (killed / "checkpoints" / "step-2").exists() and runner.poll() is None and time.time() < deadline
    ):
        time.sleep(0.01)
    # The launcher and torchrun; the ranks (in sessions of their own) die with torchrun.
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    time.sleep(2)
    done = list_checkpoints(killed)
    assert done and int(done[-1].name.split("-")[1]) < STEPS, "the run finished before it could be killed"

    resumed = run_scl(*args, *sets, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-5, worst


def test_too_few_shards_for_the_ranks_is_caught_before_launch(
    shapes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WORLD_SIZE", "RANK", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    launched = []
    monkeypatch.setattr(launch, "run_torchrun", launched.append)
    sets = tiny_overrides(shapes_root, tmp_path / "run", **{**TWO_CPU_PROCESSES, "data.num_workers": 4})
    recipe = load_recipe(RECIPES / "tiny.toml", sets[1::2])
    with pytest.raises(DataError, match=r"fewer than the 8 loader slots \(2 ranks x 4 workers\)"):
        pretrain(recipe, launch_args=["pretrain", "R.toml"])
    assert launched == []
