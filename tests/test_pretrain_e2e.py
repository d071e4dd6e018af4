"""End-to-end: `scl pretrain` on tiny generated data, checkpoints, exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from scl_cli.config import load_recipe
from scl_cli.engines.pretrain import pretrain
from scl_cli.io.checkpoints import list_checkpoints

from .conftest import RECIPES, ROOT, run_scl, tiny_overrides

OBJECTIVES = ["itc", "itm", "mlm", "scl_global", "scl_local"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_writes_metrics_and_checkpoints(shapes_root, tmp_path):
    run = tmp_path / "run"
    proc = run_scl("pretrain", str(RECIPES / "tiny.toml"), *tiny_overrides(shapes_root, run, steps=4))
    assert proc.returncode == 0, proc.stderr
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"step", "lr", "loss", "samples_per_s", *OBJECTIVES} <= set(r)
        assert all(isinstance(r[k], float) for k in ["loss", *OBJECTIVES])
    assert [p.name for p in list_checkpoints(run)] == ["step-2", "step-4"]
    ckpt = run / "checkpoints" / "step-4"
    config = json.loads((ckpt / "config.json").read_text())
    assert config["step"] == 4 and config["recipe"]["optim"]["max_steps"] == 4
    assert {"model.safetensors", "config.json", "tokenizer.json", "training_state.pt"} <= {
        p.name for p in ckpt.iterdir()
    }
    # an existing run is never overwritten without --resume
    again = run_scl("pretrain", str(RECIPES / "tiny.toml"), *tiny_overrides(shapes_root, run, steps=4))
    assert again.returncode == 2 and "--resume" in again.stderr


def test_no_scl_ablation_is_a_one_line_change(shapes_root, tmp_path):
    recipe = load_recipe(
        RECIPES / "tiny.toml",
        tiny_overrides(shapes_root, tmp_path / "run", steps=2)[1::2]
        + ["objectives.scl_global.weight=0", "objectives.scl_local.weight=0"],
    )
    result = pretrain(recipe)
    row = metrics(tmp_path / "run")[-1]
    assert "scl_global" not in row and "scl_local" not in row and {"itc", "itm", "mlm"} <= set(row)
    assert result.steps == 2


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(list_checkpoints(run)[-1] / "model.safetensors"))


def test_resume_after_sigkill_reaches_the_same_weights(shapes_root, tmp_path):
    steps = 24
    args = ["pretrain", str(RECIPES / "tiny.toml")]
    straight = tmp_path / "straight"
    sets = tiny_overrides(shapes_root, straight, steps=steps, **{"data.num_workers": 2, "log.every": 5})
    assert run_scl(*args, *sets).returncode == 0

    killed = tmp_path / "killed"
    sets = tiny_overrides(shapes_root, killed, steps=steps, **{"data.num_workers": 2, "log.every": 5})
    proc = subprocess.Popen(
        [sys.executable, "-m", "scl_cli.cli", *args, *sets],
        cwd=ROOT,
        env={**os.environ, "CI": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-4").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its loader workers, mid-run
    proc.wait()
    done = list_checkpoints(killed)
    assert done and int(done[-1].name.split("-")[1]) < steps, "the run finished before it could be killed"

    resumed = run_scl(*args, *sets, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    logged = [r["step"] for r in metrics(killed)]
    assert logged == sorted(set(logged)) and logged[-1] == steps  # no step logged twice


def test_bad_recipe_is_one_line_and_exit_code_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlr = 'fast'\nbogus = 1\n")
    for cmd in (["recipe", "validate", str(bad)], ["pretrain", str(bad)]):
        proc = run_scl(*cmd)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and "bad.toml" in lines[0] and "optim.lr" in lines[0]
    missing = run_scl("pretrain", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml: recipe file not found" in missing.stderr
    typo = run_scl("recipe", "validate", str(RECIPES / "tiny.toml"), "--set", "optim.max_step=3")
    assert typo.returncode == 2 and "optim.max_step (from --set): unknown key" in typo.stderr


def test_missing_data_is_a_clear_error(tmp_path):
    proc = run_scl("pretrain", str(RECIPES / "tiny.toml"), "--set", f'data.root="{tmp_path}"',
                   "--set", f'output.dir="{tmp_path / "run"}"')  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "shapes" in proc.stderr


def test_help_of_every_command():
    for cmd in (
        [],
        ["prepare"],
        ["pretrain"],
        ["recipe", "show"],
        ["recipe", "validate"],
        ["bench", "pretrain"],
        ["doctor"],
    ):
        proc = run_scl(*cmd, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout, cmd


def test_recipe_show_prints_resolved_toml():
    proc = run_scl("recipe", "show", str(RECIPES / "tiny.toml"), "--set", "optim.lr=0.001")
    assert proc.returncode == 0
    import tomllib

    shown = tomllib.loads(proc.stdout)
    assert shown["optim"]["lr"] == 0.001 and shown["masking"]["scl_image_drop"] == 0.8


def test_bench_pretrain_reports_throughput_and_flops(shapes_root, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_scl(
        "bench", "pretrain", str(RECIPES / "tiny.toml"), "--set", f'data.root="{shapes_root}"',
        "--steps", "1", "--warmup", "0", "--batch", "4", "--data", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["samples_per_s"] > 0 and report["flops_per_sample"] > 0 and report["peak_memory_gb"] > 0
    assert report["data"] == "loader" and 0 <= report["data_wait_fraction"] <= 1
    assert "samples/s" in proc.stdout and "waiting for data" in proc.stdout
