"""End-to-end video: pre-train on shapes images and clips together, fine-tune on the clips, evaluate
text-to-video retrieval and the motion-foil rate through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scl_cli.config import load_recipe
from scl_cli.engines.finetune import finetune
from scl_cli.inference.loading import load_model

from .conftest import RECIPES, run_scl, tiny_overrides

pytestmark = pytest.mark.slow


def test_mixed_pretraining_then_video_retrieval(shapes_root, tmp_path):
    run = tmp_path / "mixed"
    proc = run_scl("pretrain", str(RECIPES / "tiny_mixed.toml"), "--plain",
                   *tiny_overrides(shapes_root, run, steps=4, **{"data.num_frames": 2, "output.checkpoint_every": 4,
                                                                  "log.every": 2}))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Every step says which media its batch held; with 4 steps both kinds are likely but not certain.
    assert all("video_batches" in row and "loss_image" in row and "loss_video" in row for row in logged)
    # The recipe's time-order terms are logged as means over the clip batches of each window (null
    # when a window held none); at the start a clip and its reversal score alike: ln 2.
    for row in logged:
        for key in ("itc/order", "itm/order"):
            assert key in row and f"{key}/accuracy" in row
            if row["video_batches"] > 0:
                assert abs(row[key] - math.log(2)) < 0.05, row
            else:
                assert row[key] is None or math.isnan(row[key])

    ft = tmp_path / "ft"
    sets = {"data.root": f'"{shapes_root}"', "output.dir": f'"{ft}"', "optim.batch_size": 4, "task.epochs": 0.2,
            "log.every": 1, "log.tensorboard": "false", "data.num_workers": 0, "data.num_frames": 2,
            "task.rerank": 2,
            # the time-reversed negatives ride along, so the option runs through a real fine-tune
            "objectives.itc.reversed_clips": "true", "objectives.rank.reversed_clips": "true"}  # fmt: skip
    result = finetune(load_recipe(RECIPES / "finetune" / "shapes_video_retrieval.toml",
                                  [f"{k}={v}" for k, v in sets.items()]), run)  # fmt: skip
    assert result.train.steps >= 1
    assert {"t2v_r1", "v2t_r1", "motion_itc", "motion_fusion"} <= set(result.evaluation.metrics)
    # Clips: the temporal embedding is fine-tuned too (it is frozen only for image tasks).
    before = load_model(run).model.vision.temporal_embedding
    after = load_model(ft).model.vision.temporal_embedding
    assert not torch.equal(before, after)

    out = tmp_path / "report.json"
    proc = run_scl("eval", "retrieval", "--ckpt", str(ft), "--data", f"{shapes_root / 'shapes'}:clips",
                   "--split", "test", "--rerank", "2", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["samples"] == 4 and report["details"]["frames"] == 2
    assert 0 <= report["metrics"]["motion_itc"] <= 100 and report["baselines"]["motion_itc"] == 50.0


def test_too_many_frames_for_the_temporal_embedding_is_refused(shapes_root, tmp_path):
    proc = run_scl("pretrain", str(RECIPES / "tiny_mixed.toml"), "--plain",
                   *tiny_overrides(shapes_root, tmp_path / "r", steps=1, **{"data.num_frames": 9}))  # fmt: skip
    assert proc.returncode == 2
    assert "data.num_frames 9 exceeds model.vision.max_frames 8" in proc.stderr
