"""End-to-end: fine-tune a tiny pre-training checkpoint on each task, evaluate it through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import scl_cli as scl
from scl_cli.config import load_recipe
from scl_cli.engines.finetune import finetune
from scl_cli.engines.pretrain import pretrain
from scl_cli.errors import CheckpointError
from scl_cli.inference.loading import load_model

from .conftest import RECIPES, run_scl, tiny_overrides


@pytest.fixture(scope="module")
def tiny_ckpt(shapes_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pretrain") / "run"
    sets = tiny_overrides(shapes_root, run, steps=2)[1::2]
    pretrain(load_recipe(RECIPES / "tiny.toml", sets))
    return run


def finetune_sets(root: Path, run: Path, **extra) -> list[str]:
    sets = {"data.root": f'"{root}"', "output.dir": f'"{run}"', "optim.batch_size": 8, "task.epochs": 0.1,
            "log.every": 1, "log.tensorboard": "false", "data.num_workers": 0, **extra}  # fmt: skip
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.mark.parametrize(
    "recipe, metric",
    [("shapes_vqa.toml", "accuracy"), ("shapes_nlvr2.toml", "accuracy"), ("shapes_retrieval.toml", "r_mean")],
)
def test_finetune_then_evaluate(shapes_root, tiny_ckpt, tmp_path, recipe, metric):
    run = tmp_path / "ft"
    r = load_recipe(RECIPES / "finetune" / recipe, finetune_sets(shapes_root, run, **{"task.rerank": 4}
                    if "retrieval" in recipe else {}))  # fmt: skip
    result = finetune(r, tiny_ckpt)
    assert result.train.steps >= 1 and result.train.last_checkpoint is not None
    assert result.new_heads, "the task head is new for a pre-training checkpoint"
    assert metric in result.evaluation.metrics
    config = json.loads((result.train.last_checkpoint / "config.json").read_text())
    assert config["task"]["name"] == r.task.name

    out = tmp_path / "report.json"
    task = r.task.name
    proc = run_scl("eval", task, "--ckpt", str(run), "--out", str(out), "--split", "test")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["task"] == task and report["split"] == "test" and report["samples"] > 0
    assert metric in report["metrics"] and report["seconds"] > 0 and report["checkpoint"]
    if task in ("vqa", "nlvr2"):  # shapes questions and statements are scored per kind as well
        assert any(k.startswith("accuracy/") for k in report["metrics"]), report["metrics"]

    # The fine-tuned run describes its head and answers from Python.
    head = {"vqa": "vqa", "nlvr2": "nlvr2", "retrieval": "rank"}[task]
    assert head in config["heads"]
    model = scl.load(run)
    assert model.heads == [head]
    image = Image.new("RGB", (48, 48), "red")
    if task == "vqa":
        assert config["heads"]["vqa"]["vocabulary"] == "answers.json"
        assert model.answer(image, "what colour is the circle?").answer in model.answers
    elif task == "nlvr2":
        assert 0 <= model.nlvr2(image, image, "both images are red").probability <= 1
    else:
        assert model.scorer == "rank head" and model.score(image, ["a red circle"]).shape == (1,)


def test_zero_shot_retrieval_from_a_pretraining_checkpoint(shapes_root, tiny_ckpt, tmp_path):
    reports = {}
    for k in ("0", "4", "all"):
        out = tmp_path / f"r{k}.json"
        proc = run_scl("eval", "retrieval", "--ckpt", str(tiny_ckpt), "--data", str(shapes_root / "shapes"),
                       "--split", "val", "--rerank", k, "--out", str(out))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        reports[k] = json.loads(out.read_text())
    for report in reports.values():
        assert set(report["metrics"]) >= {"ir_r1", "ir_r5", "ir_r10", "tr_r1", "tr_r5", "tr_r10", "r_mean"}
        assert report["details"]["scorer"] == "ITM match logit"
    assert reports["0"]["samples"] == 8


def test_image_size_change_interpolates_the_position_grid(shapes_root, tiny_ckpt):
    r = load_recipe(
        RECIPES / "finetune" / "shapes_vqa.toml", ["model.vision.image_size=96", f'data.root="{shapes_root}"']
    )
    loaded = load_model(tiny_ckpt, r.model)
    assert loaded.model.config.vision.image_size == 96
    assert any("interpolated" in note for note in loaded.notes)


def test_architecture_mismatch_is_refused_with_the_field(tiny_ckpt):
    r = load_recipe(RECIPES / "finetune" / "shapes_vqa.toml", ["model.fusion.layers=5"])
    with pytest.raises(CheckpointError, match=r"model.fusion.layers = 5 \(checkpoint: 2\)"):
        load_model(tiny_ckpt, r.model)


def test_rank_head_starts_as_the_itm_match_row(tiny_ckpt):
    from scl_cli.objectives import build_objectives, validate_objectives

    objectives = build_objectives(validate_objectives({"rank": {}}))
    model = load_model(tiny_ckpt, None, objectives).model
    assert torch.equal(model.rank_head.weight[0], model.itm_head.fc.weight[1])
    assert torch.equal(model.rank_head.bias[0], model.itm_head.fc.bias[1])


def test_nlvr2_adds_a_third_token_type_copied_from_the_image_type(tiny_ckpt):
    from scl_cli.objectives import build_objectives, validate_objectives

    model = load_model(tiny_ckpt, None, build_objectives(validate_objectives({"nlvr2": {}}))).model
    table = model.token_type_embeddings.weight
    assert table.shape[0] == 3 and torch.equal(table[2], table[1])


def test_finetune_rejects_pretraining_recipes_and_wrong_objectives(shapes_root, tiny_ckpt, tmp_path):
    proc = run_scl("finetune", str(RECIPES / "tiny.toml"), "--ckpt", str(tiny_ckpt))
    assert proc.returncode == 2 and "no [task] table" in proc.stderr
    proc = run_scl("finetune", str(RECIPES / "finetune" / "shapes_vqa.toml"), "--ckpt", str(tiny_ckpt),
                   "--set", "objectives.mlm.weight=1", "--set", f'output.dir="{tmp_path / "x"}"')  # fmt: skip
    assert proc.returncode == 2 and "mlm" in proc.stderr


def test_eval_without_a_task_head_says_how_to_get_one(tiny_ckpt):
    proc = run_scl("eval", "vqa", "--ckpt", str(tiny_ckpt))
    assert proc.returncode == 2 and "no VQA head" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_two_process_finetuning_is_launched_like_pretraining(shapes_root, tiny_ckpt, tmp_path):
    """`scl finetune` on a 2-device topology starts torchrun itself (gloo on CPU), trains on the
    recipe's global batch, checkpoints, and the launcher reports the evaluation rank 0 wrote."""
    run = tmp_path / "ft2"
    sets = finetune_sets(shapes_root, run, **{"topology.devices_per_node": 2, "topology.device": '"cpu"',
                                              "data.num_workers": 1, "optim.max_steps": 2, "task.epochs": 0.2})  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    proc = run_scl("finetune", str(RECIPES / "finetune" / "shapes_vqa.toml"), "--ckpt", str(tiny_ckpt), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((run / "checkpoints").glob("step-*")), "no checkpoint"
    report = json.loads((run / "eval.json").read_text())
    assert report["task"] == "vqa" and "accuracy" in report["metrics"]
    assert "vqa on shapes/val" in proc.stdout  # the launcher's summary table
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # samples really seen per step: both ranks' micro-batches = the recipe's global batch of 8
    for line in lines:
        assert line["samples_per_s"] * line["step_time"] == pytest.approx(8, rel=1e-6)


@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_a_process_count_other_than_the_topology_stops_before_the_first_step(
    shapes_root, tiny_ckpt, tmp_path, command
):
    recipe = RECIPES / ("finetune/shapes_vqa.toml" if command == "finetune" else "tiny.toml")
    ckpt = ["--ckpt", str(tiny_ckpt)] if command == "finetune" else []
    env = {"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0"}  # as torchrun --nproc-per-node 4 sets them
    sets = ["--set", f'data.root="{shapes_root}"', "--set", f'output.dir="{tmp_path / "run"}"']
    proc = run_scl(command, str(recipe), *ckpt, *sets, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "has 4 process(es) but the recipe's topology asks for 1" in lines[0], lines
    assert "--set topology.nodes=1 --set topology.devices_per_node=4" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()
    other = run_scl(command, str(recipe), *ckpt, *sets, env={**env, "RANK": "2", "LOCAL_RANK": "2"})
    assert other.returncode == 2 and other.stderr.strip() == ""


def test_finetune_leaves_the_callers_recipe_unchanged(shapes_root, tiny_ckpt, tmp_path):
    r = load_recipe(
        RECIPES / "finetune" / "shapes_vqa.toml",
        finetune_sets(shapes_root, tmp_path / "ft", **{"task.epochs": 0.05}),
    )
    before = r.model_dump()
    finetune(r, tiny_ckpt, evaluate_after=False)
    assert r.model_dump() == before


def test_finetune_help_names_the_task_table():
    proc = run_scl("finetune", "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0 and "recipe's [task] (VQA, NLVR2, retrieval)" in proc.stdout
