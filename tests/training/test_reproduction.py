"""Every checkpoint records where its run came from; `--reproduce` re-runs the first steps of a run
and matches its losses bit for bit on the same machine, and not with a changed recipe."""

from __future__ import annotations

import json

from scl_cli.config import load_recipe
from scl_cli.engines.pretrain import pretrain, reproduce
from scl_cli.io.fingerprint import sha256_file

from ..conftest import RECIPES


def recipe(shapes_root, run, *sets: str):
    return load_recipe(RECIPES / "tiny.toml", [
        f'data.root="{shapes_root}"', f'output.dir="{run}"', "optim.max_steps=4", "optim.batch_size=8",
        "log.every=1", "log.loggers=[]", "data.num_workers=0", "output.checkpoint_every=2", "topology.device=cpu",
        *sets,
    ])  # fmt: skip


def test_checkpoints_record_the_run_and_reproduce_checks_its_losses(shapes_root, tmp_path):
    run = tmp_path / "run"
    pretrain(recipe(shapes_root, run))
    config = json.loads((run / "checkpoints" / "step-4" / "config.json").read_text())
    record = config["reproduction"]
    assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
    assert record["packages"]["torch"] and record["packages"]["python"]
    assert record["data"]["shapes"]["sha256"] == sha256_file(shapes_root / "shapes" / "manifest.json")
    assert record["topology"]["world_size"] == 1 and record["topology"]["precision"] == "fp32"
    assert config["recipe"]["optim"]["max_steps"] == 4  # the resolved recipe

    same = reproduce(recipe(shapes_root, tmp_path / "elsewhere"), run, steps=3)
    assert same.matches and same.exact, same.mismatches
    assert {row[0] for row in same.rows} == {"1", "2", "3"} and all(row[-1] == "ok" for row in same.rows)
    assert not (tmp_path / "elsewhere").exists()  # the re-run writes into a temporary folder

    changed = reproduce(recipe(shapes_root, run, "optim.lr=1e-3"), run, steps=2)
    assert not changed.matches and changed.mismatches
    assert any("optim.lr" in note for note in changed.notes)
