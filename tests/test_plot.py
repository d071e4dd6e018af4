"""`scl plot`: metrics.jsonl read back (torn lines, nulls), the metric choice, TensorBoard-style
smoothing against a plain re-statement, pictures that open, and the terminal summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from scl_cli.engines.plot import plot
from scl_cli.errors import UsageError
from scl_cli.figures.curves import default_metrics, read_run, smooth, sparkline

from .conftest import run_scl


def write_run(folder: Path, losses: list[float | None], extra: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for i, loss in enumerate(losses):
            f.write(json.dumps({"step": 10 * (i + 1), "loss": loss, "itc": 2.0 - i, "lr": 1e-4 / (i + 1),
                                "samples_per_s": 50.0, "step_time": 0.1, "itc/temperature": 0.07,
                                **(extra or {})}) + "\n")  # fmt: skip
        f.write('{"step": 99, "lo')  # a run killed mid-line
    return folder


def test_read_run_keeps_nulls_and_skips_torn_lines(tmp_path):
    run = read_run(write_run(tmp_path / "a", [3.0, None, 1.0]))
    assert run.name == "a"
    assert run.series["loss"] == [(10, 3.0), (20, None), (30, 1.0)]
    assert [s for s, _ in run.series["itc"]] == [10, 20, 30]


def test_default_metrics_put_losses_then_evaluation_first_and_hide_step_time(tmp_path):
    run = read_run(write_run(tmp_path / "a", [3.0, 2.0], {"eval/ir_r1": 5.0, "scl_global": 1.0}))
    chosen = default_metrics([run])
    assert chosen[:4] == ["loss", "itc", "scl_global", "eval/ir_r1"]
    assert "step_time" not in chosen and chosen[-2:] == ["lr", "samples_per_s"]


def test_smoothing_is_the_debiased_exponential_average():
    values, w = [4.0, None, 2.0, 1.0], 0.6
    got = smooth(values, w)
    ema, n, want = 0.0, 0, []
    for v in values:
        if v is None:
            want.append(None)
            continue
        ema, n = w * ema + (1 - w) * v, n + 1
        want.append(ema / (1 - w**n))
    assert got[1] is None and got[0] == pytest.approx(4.0)
    assert got == pytest.approx(want)
    assert smooth(values, 0.0) == values
    with pytest.raises(UsageError):
        smooth(values, 1.0)


def test_sparkline_spans_low_to_high():
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([None, 1.0]) == " ▁" and sparkline([]) == ""
    assert len(sparkline(list(map(float, range(500))), width=40)) == 40


def test_two_runs_overlaid_in_png_and_svg(tmp_path):
    a = write_run(tmp_path / "x" / "run", [3.0, 2.0, 1.0])
    b = write_run(tmp_path / "y" / "run", [3.5, 2.5, 2.0])
    result = plot([a, b], ["loss", "lr"], tmp_path / "c.png", smoothing=0.5)
    image = Image.open(result.path)
    assert image.format == "PNG" and image.size[0] > 600
    assert {row[1] for row in result.rows} == {"x/run", "y/run"}  # same folder name: parents tell them apart
    last = {row[1]: float(row[3]) for row in result.rows if row[0] == "loss"}
    assert last["x/run"] < last["y/run"]
    svg = plot([a], ["loss"], tmp_path / "c.svg").path.read_text()
    assert svg.lstrip().startswith("<?xml") and "loss" in svg
    assert plot([a]).path == a / "curves.png" and (a / "curves.png").is_file()


def test_unknown_metric_and_missing_run_are_one_line_errors(tmp_path):
    a = write_run(tmp_path / "a", [1.0])
    with pytest.raises(UsageError, match="nope not logged.*loss"):
        plot([a], ["nope"], tmp_path / "c.png")
    with pytest.raises(UsageError, match="no metrics.jsonl"):
        plot([tmp_path / "missing"])
    with pytest.raises(UsageError, match=".png or .svg"):
        plot([a], ["loss"], tmp_path / "c.jpg")


def test_cli_ascii_summary(tmp_path):
    a = write_run(tmp_path / "a", [3.0, 2.0, 1.0])
    proc = run_scl("plot", str(a), "--metrics", "loss,itc", "--ascii", env={"COLUMNS": "160"})
    assert proc.returncode == 0, proc.stderr
    assert "█" in proc.stdout and "loss" in proc.stdout and not (a / "curves.png").exists()
    row = proc.stdout.split("loss")[1].split()  # run, first, last, min, max, curve
    assert row[0] == "a" and math.isclose(float(row[1]), 3.0) and math.isclose(float(row[2]), 1.0)
