"""`benchmarks/reference_step.py`: the paper code's step for the GPU check's side-by-side ratio.
Its code is not part of scl, so here: argument handling, one-line failures, and the JSON fields;
with SCL_REFERENCE pointing at a checkout of IIGROUP/SCL, also a CPU run of the real thing (--tiny)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from scl_cli.engines.bench_pretrain import BenchReport

from .conftest import ROOT, load_benchmark

SCRIPT = ROOT / "benchmarks" / "reference_step.py"


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def load_script():
    return load_benchmark("reference_step")


def assert_one_line(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reference_step: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("folder", "fragments"),
    [("nowhere", ["no such folder"]), (".", ["not a checkout of IIGROUP/SCL", "scl/modules/scl_module.py"])],
)
def test_a_path_that_is_not_the_paper_code_is_one_line_and_exit_2(tmp_path, capsys, folder, fragments):
    assert load_script().main([str(tmp_path / folder), "--batch", "4"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert_one_line(out.err, *fragments)


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script().parse_args(["somewhere", "--batch", "1"])
    assert exit_.value.code == 2 and "--batch must be >= 2" in capsys.readouterr().err


def test_a_missing_dependency_of_the_paper_code_is_named(tmp_path):
    # In a fresh interpreter: the script installs its stand-ins (pytorch_lightning, ...) before importing.
    modules = tmp_path / "scl" / "modules"
    modules.mkdir(parents=True)
    (tmp_path / "scl" / "__init__.py").write_text("")
    (tmp_path / "scl" / "config.py").write_text("config_dict = {}\n")
    (modules / "__init__.py").write_text("")
    (modules / "scl_module.py").write_text("import a_dependency_nobody_has\n")
    proc = run_script(str(tmp_path), "--device", "cpu")
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line(proc.stderr, "cannot import the paper's model", "a_dependency_nobody_has")


def test_the_report_has_the_fields_of_scl_bench_pretrain():
    # gpu_check.sh divides our eager figures by these: same names, same units.
    script = load_script()
    calls = []
    measured = script.measure(lambda: calls.append(1), batch=4, device=torch.device("cpu"), steps=3, warmup=2,
                              count_flops=lambda: 8e9)  # fmt: skip
    assert len(calls) == 5 and measured["flops_per_sample"] == 2e9 and measured["samples_per_s"] > 0
    out = script.report(measured, torch.device("cpu"), "bf16", 4, 3, 1000, {"commit": "abc"})
    assert set(out) == {f.name for f in dataclasses.fields(BenchReport)} | {"reference"}
    assert out["precision"] == "bf16" and out["batch"] == 4 and out["mfu"] is None
    json.dumps(out)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("SCL_REFERENCE"), reason="set SCL_REFERENCE to a checkout of IIGROUP/SCL"
)
def test_the_paper_code_runs_its_step_on_cpu(tmp_path):
    out = tmp_path / "reference.json"
    proc = run_script(os.environ["SCL_REFERENCE"], "--tiny", "--device", "cpu", "--batch", "4", "--steps", "1",
                      "--warmup", "1", "--json", str(out), timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["reference"]["losses"] == ["itm", "mlm", "con", "mgsc", "mltc"]
    assert math.isfinite(report["reference"]["last_total_loss"]) and report["samples_per_s"] > 0
