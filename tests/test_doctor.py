"""`scl doctor`: a healthy setup passes; a missing data set, too few shards for the loader slots,
a full disk and uncached weights offline each fail with what to do; the exit code says whether the
recipe can start."""

from __future__ import annotations

import shutil
from collections import namedtuple

from scl_cli.config import load_recipe
from scl_cli.engines.doctor import doctor

from .conftest import RECIPES, run_scl


def recipe(shapes_root, tmp_path, *sets: str):
    return load_recipe(RECIPES / "tiny.toml", [f'data.root="{shapes_root}"', f'output.dir="{tmp_path / "run"}"',
                                               "data.num_workers=1", *sets])  # fmt: skip


def by_name(report) -> dict:
    return {c.name: c for c in report.checks}


def test_a_healthy_setup_passes(shapes_root, tmp_path):
    report = doctor(recipe(shapes_root, tmp_path))
    checks = by_name(report)
    assert report.ok, [c for c in report.checks if c.status == "fail"]
    assert {"python", "torch", "data: shapes", "tokenizer", "write access", "free disk"} <= set(checks)
    assert checks["data: shapes"].status == "ok" and "shards" in checks["data: shapes"].found
    assert not (tmp_path / "run").exists()  # the write check leaves nothing behind


def test_a_broken_setup_fails_and_says_what_to_do(shapes_root, tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    report = doctor(recipe(shapes_root, tmp_path, 'data.train=["shapes", "coco"]', "data.num_workers=16",
                           "model.init=pretrained", 'model.vision.weights="vit_base_patch16_clip_224.openai"',
                           'model.text.weights="FacebookAI/roberta-base"'))  # fmt: skip
    checks = by_name(report)
    assert not report.ok
    failed = {c.name for c in report.checks if c.status == "fail"}
    assert {"data: coco", "data: shapes", "free disk"} <= failed, failed
    assert "scl prepare coco" in checks["data: coco"].fix
    assert "16 loader slots" in checks["data: shapes"].found and "num_workers" in checks["data: shapes"].fix
    assert "free" in checks["free disk"].fix or "space" in checks["free disk"].fix
    # tests run offline (conftest): weights that are not in the cache cannot be fetched
    if checks["vision weights"].status != "ok":
        assert checks["vision weights"].status == "fail" and "cache" in checks["vision weights"].found
    assert all(c.fix for c in report.checks if c.status != "ok")


def test_exit_code_says_whether_the_recipe_can_start(shapes_root, tmp_path):
    sets = ["--set", f'data.root="{shapes_root}"', "--set", f'output.dir="{tmp_path / "run"}"',
            "--set", "data.num_workers=1"]  # fmt: skip
    healthy = run_scl("doctor", str(RECIPES / "tiny.toml"), *sets)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "data: shapes" in healthy.stdout and "can start" in healthy.stderr
    broken = run_scl("doctor", str(RECIPES / "tiny.toml"), *sets, "--set", 'data.train=["missing"]')
    assert broken.returncode == 1 and "FAIL" in broken.stdout and "data: missing" in broken.stderr
