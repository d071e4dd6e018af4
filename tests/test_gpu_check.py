"""`benchmarks/gpu_check.sh --rehearse`: the GPU check's every stage, on CPU with the tiny model, so
that the script cannot break unnoticed before the minutes of a GPU window are spent on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_rehearsal_runs_every_stage_and_writes_the_summary(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--rehearse"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # the last thing printed is the same JSON object
    assert json.loads(proc.stdout[proc.stdout.index("\n{") :]) == summary
    assert set(summary) >= {"env", "eager", "syncs", "ckpt-b8", "compiled"}
    for stage in ("eager", "ckpt-b8", "compiled"):
        assert "error" not in summary[stage], summary[stage]
        assert summary[stage]["samples_per_s"] > 0 and summary[stage]["precision"] == "bf16"
    assert summary["compiled"]["compile"] and summary["ckpt-b8"]["activation_checkpointing"]
    assert summary["syncs"]["syncs"] == "not checked on cpu"
    assert "scl:vision:" in (tmp_path / "profile.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.tar.gz", "profile.txt", "summary.json"]
