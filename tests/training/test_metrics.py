"""metrics.jsonl lines, truncation on resume, TensorBoard events."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from scl_cli.training.loggers import MetricsLogger

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_lines_are_json_with_step_first(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, loggers=[]) as metrics:
        metrics.log(1, {"loss": 3.5, "lr": 1e-5})
        metrics.log(2, {"loss": torch.tensor(2.5), "grad_norm": float("nan")})
        # Flushed per line: readable while the logger is still open.
        assert len(records(tmp_path)) == 2
    lines = records(tmp_path)
    assert lines == [{"step": 1, "loss": 3.5, "lr": 1e-5}, {"step": 2, "loss": 2.5, "grad_norm": None}]
    assert list(lines[0]) == ["step", "loss", "lr"]


def test_truncate_after_drops_later_steps_and_torn_lines(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, loggers=[]) as metrics:
        for step in (10, 20, 30):
            metrics.log(step, {"loss": step / 10})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "lo')  # a run killed in the middle of a line

    with MetricsLogger(tmp_path, loggers=[]) as resumed:
        resumed.truncate_after(20)
        resumed.log(30, {"loss": 0.5})
    assert [(r["step"], r["loss"]) for r in records(tmp_path)] == [(10, 1.0), (20, 2.0), (30, 0.5)]


def test_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    metrics = MetricsLogger(tmp_path / "run", loggers=["tensorboard"], enabled=False)
    metrics.truncate_after(0)
    metrics.log(1, {"loss": 1.0})
    metrics.close()
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_tensorboard_event_file(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, loggers=["tensorboard"]) as metrics:
        metrics.log(1, {"loss": 1.0, "samples_per_s": 10.0})
        metrics.log(2, {"loss": 0.5, "samples_per_s": 11.0})
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 0.5)]


def test_a_logger_registered_by_name_receives_every_step(tmp_path: Path) -> None:
    from scl_cli.training.loggers import register_logger

    seen: list[tuple[int, dict]] = []

    class ListLogger:
        def __init__(self, run_dir: Path) -> None:
            self.run_dir = run_dir

        def log(self, step: int, values: dict[str, float]) -> None:
            seen.append((step, values))

        def truncate_after(self, step: int) -> None:
            seen.append((step, {"truncated": 1.0}))

        def close(self) -> None:
            seen.append((-1, {}))

    register_logger("list", ListLogger)
    with MetricsLogger(tmp_path, loggers=["list"]) as metrics:
        metrics.truncate_after(3)
        metrics.log(4, {"loss": torch.tensor(0.5)})
    assert seen == [(3, {"truncated": 1.0}), (4, {"loss": 0.5}), (-1, {})]
    assert records(tmp_path) == [{"step": 4, "loss": 0.5}]


def test_unknown_logger_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown logger 'nope'.*tensorboard"):
        MetricsLogger(tmp_path, loggers=["nope"])


def test_old_recipes_tensorboard_flag_still_validates() -> None:
    from scl_cli.config.recipe import LogConfig

    assert LogConfig.model_validate({"tensorboard": False}).loggers == []
    assert LogConfig.model_validate({"tensorboard": True, "every": 5}).loggers == ["tensorboard"]
    assert LogConfig().loggers == ["tensorboard"]
