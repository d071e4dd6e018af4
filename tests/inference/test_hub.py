"""The Hugging Face Hub without a network: a folder laid out as a Hub snapshot in `HF_HUB_CACHE`
loads by its id in offline mode; an id that is not cached is one line; `push_to_hub` / `scl push`
upload the `save_pretrained` folder with a model card (recipe, data manifests, eval.json metrics)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants

import scl_cli as scl
from scl_cli.errors import CheckpointError

from ..conftest import ROOT
from ..test_convert_cli import scl as run_cli

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo_id: str, folder: Path) -> Path:
    """`root` laid out as huggingface_hub's cache holding `folder` as repo_id@main."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    return root


def test_a_hub_snapshot_loads_offline_by_its_id(heads_ckpt, images, tmp_path, monkeypatch):
    cache = hub_cache(tmp_path / "hub", "someone/tiny-scl", heads_ckpt)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert constants.HF_HUB_OFFLINE  # tests never reach the network (tests/conftest.py)
    model = scl.load("someone/tiny-scl")
    assert model.source == "someone/tiny-scl" and model.heads == ["vqa", "nlvr2", "rank"]
    local = scl.load(heads_ckpt)
    assert torch.equal(model.embed_images([images["red"]]), local.embed_images([images["red"]]))
    assert model.answer(images["red"], "what colour?") == local.answer(images["red"], "what colour?")
    assert scl.load("hf-hub:someone/tiny-scl").heads == model.heads

    with pytest.raises(CheckpointError) as err:
        scl.load("someone/not-cached")
    message = str(err.value)
    assert (
        "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE=1" in message and "\n" not in message
    )


def test_offline_mode_and_cache_come_from_the_environment(heads_ckpt, tmp_path):
    """As a user runs it: HF_HUB_OFFLINE=1 and HF_HUB_CACHE set before Python starts."""
    cache = hub_cache(tmp_path / "hub", "someone/tiny-scl", heads_ckpt)
    probe = textwrap.dedent("""
        import scl_cli as scl
        model = scl.load("someone/tiny-scl")
        print(model.heads, model.embed_texts(["a red circle"]).shape[1])
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['vqa', 'nlvr2', 'rank'] 64"


class FakeHub:
    """Stands in for the Hub's HTTP API: records the repo and the uploaded folder's files."""

    def __init__(self) -> None:
        self.repos: list[tuple[str, bool | None]] = []
        self.files: dict[str, bytes] = {}

    def create_repo(self, api, repo_id, *, token=None, private=None, exist_ok=False, **_):
        self.repos.append((repo_id, private))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, api, *, repo_id, folder_path, commit_message=None, **_):
        self.files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.message = commit_message
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{COMMIT}"})()


def test_scl_push_uploads_the_model_with_its_card(tiny_run, shapes_root, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    report = {"task": "retrieval", "checkpoint": str(run), "dataset": "shapes", "split": "test", "samples": 8,
              "seconds": 1.0, "metrics": {"ir_r1": 12.5, "r_mean": 30.0}, "baselines": {"ir_r1": 12.5}}  # fmt: skip
    (run / "eval.json").write_text(json.dumps(report))
    hub = FakeHub()
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: hub.create_repo(api, repo_id, **kw))
    monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kw: hub.upload_folder(api, **kw))
    code, out, err = run_cli(monkeypatch, capsys, "push", str(run), "someone/tiny-scl", "--private")
    assert code == 0, err
    assert hub.repos == [("someone/tiny-scl", True)] and f"commit/{COMMIT}" in out + err
    assert set(hub.files) == {"model.safetensors", "config.json", "tokenizer.json", "README.md"}
    card = hub.files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: scl-cli") and 'scl.load("someone/tiny-scl")' in card
    assert "| retrieval | shapes/test | ir_r1 | 12.50 | 12.50 |" in card  # metrics of eval.json
    assert "| shapes |" in card and "train: " in card  # the data set's manifest
    assert "[objectives.itc]" in card and "## Architecture" in card  # the recipe
    config = json.loads(hub.files["config.json"])
    assert config["heads"] == {} and "checkpoint" not in config and config["tokenizer"] == "tokenizer.json"


def test_scl_push_offline_or_to_a_bad_id_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "push", str(tiny_run), "someone/tiny-scl")
    error = err.strip().splitlines()[-1]
    assert (
        code == 1
        and error.startswith("error:")
        and "cannot push while offline" in error
        and "Traceback" not in err
    )
    code, _, err = run_cli(monkeypatch, capsys, "push", str(tiny_run), "not a repo id")
    assert code == 2 and "expected a Hub model id" in err
    code, out, err = run_cli(
        monkeypatch, capsys, "push", str(tiny_run), "someone/tiny-scl", "--out", str(tmp_path / "f")
    )
    assert code == 0 and "not uploaded" in out + err and (tmp_path / "f" / "README.md").is_file()
    assert scl.load(tmp_path / "f").embed_texts("a red circle").shape[0] == 1
