"""The layering (ARCHITECTURE.md): light commands stay light, the import contracts catch a new
upward import, and an objective from another package trains through its entry point alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import RECIPES, ROOT, run_scl, tiny_overrides

HEAVY = ("torch", "transformers", "timm", "numpy")


@pytest.mark.parametrize("argv", [["--help"], ["recipe", "validate", str(RECIPES / "base.toml")]])
def test_help_and_recipe_validate_import_no_deep_learning_library(argv):
    probe = textwrap.dedent(f"""
        import sys
        sys.argv = ["scl", *{argv!r}]
        from scl_cli.cli import main
        try:
            main()
        except SystemExit as exit:
            assert not exit.code, exit.code
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_layer_contract_fails_on_an_upward_import(tmp_path):
    """A copy of the package with one import from `config` up into `training` breaks the contract."""
    shutil.copytree(ROOT / "scl_cli", tmp_path / "scl_cli", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    clean = subprocess.run(lint, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert clean.returncode == 0, clean.stdout[-3000:]
    recipe = tmp_path / "scl_cli" / "config" / "recipe.py"
    recipe.write_text(recipe.read_text() + "\nimport scl_cli.training.trainer  # noqa\n")
    broken = subprocess.run(lint, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert broken.returncode != 0
    assert "scl_cli.config.recipe -> scl_cli.training.trainer" in broken.stdout


PLUGIN = '''
"""An objective written only against scl's public classes, shipped in its own package."""
import torch
from pydantic import Field

from scl_cli.config.objectives import ObjectiveSettings
from scl_cli.objectives import LossOutput, Objective


class CentreSettings(ObjectiveSettings):
    name = "centre"
    objective = "scl_centre:Centre"
    pretraining = False
    target: float = Field(0.0)


class Centre(Objective):
    """Pulls the mean ITC image feature towards `target` (a toy, but a real gradient)."""

    name = "centre"
    Settings = CentreSettings

    def encodings(self):
        return ("full",), ("full",)

    def loss(self, ctx) -> LossOutput:
        _, image = ctx.itc()
        loss = (image.mean() - self.settings.target) ** 2
        return {"loss": loss, "mean": image.mean().detach()}
'''


@pytest.mark.slow
def test_an_objective_from_another_package_trains_through_its_entry_point(tmp_path, shapes_root):
    site = tmp_path / "site"
    (site / "scl_centre-0.1.dist-info").mkdir(parents=True)
    (site / "scl_centre.py").write_text(PLUGIN)
    (site / "scl_centre-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: scl-centre\nVersion: 0.1\n"
    )
    (site / "scl_centre-0.1.dist-info" / "entry_points.txt").write_text(
        "[scl_cli.objectives]\ncentre = scl_centre:CentreSettings\n"
    )
    recipe = tmp_path / "centre.toml"
    recipe.write_text(
        (RECIPES / "tiny.toml").read_text().split("[objectives.itc]")[0]
        + "[objectives.itc]\nweight = 1.0\n\n[objectives.centre]\nweight = 0.5\ntarget = 0.25\n"
        + "\n[optim]\nlr = 5e-4\nmax_steps = 2\nbatch_size = 8\n"
    )
    env = {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = tmp_path / "run"
    out = run_scl("pretrain", str(recipe), *tiny_overrides(shapes_root, run, steps=2), env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"centre", "centre/mean", "itc"} <= set(line) for line in lines)
    shown = run_scl("recipe", "show", str(recipe), env=env)
    assert "[objectives.centre]" in shown.stdout and "target = 0.25" in shown.stdout
