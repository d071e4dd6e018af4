"""`scl convert --official` and `read_checkpoint`: a tiny checkpoint in the published layout (a
PyTorch Lightning `.ckpt`) becomes ours, on disk or on the fly; bad files are one-line errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from scl_cli.cli import main
from scl_cli.config.recipe import ModelConfig
from scl_cli.errors import CheckpointError
from scl_cli.io.checkpoints import load_model_weights, save_checkpoint
from scl_cli.model import SCLModel
from scl_cli.model.checkpoint import read_checkpoint, read_official_checkpoint

from .model.test_official import KEYS_FILE, tiny_official_state_dict

pytestmark = pytest.mark.skipif(KEYS_FILE is None, reason="official_scl_keys.txt (shared/) not available")


def lightning_checkpoint(path: Path, state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> Path:
    """What Lightning writes: weights under `state_dict`, counters, and hyper-parameters in its
    AttributeDict (a plain dict subclass that scl reads back as a dict)."""
    module = types.ModuleType("pytorch_lightning.utilities.parsing")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = module.__name__, "AttributeDict"
    module.AttributeDict = AttributeDict
    with monkeypatch.context() as m:
        for parent in ("pytorch_lightning", "pytorch_lightning.utilities"):
            m.setitem(sys.modules, parent, types.ModuleType(parent))
        m.setitem(sys.modules, module.__name__, module)
        torch.save(
            {
                "epoch": 9,
                "global_step": 12000,
                "pytorch-lightning_version": "1.5.10",
                "state_dict": state,
                "hyper_parameters": AttributeDict(config={"max_text_len": 50, "loss_names": {"scl": 1}}),
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-5, "params": [0]}]}],
            },
            path,
        )
    return path


def scl(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run the `scl` entry point in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["scl", *args])
    monkeypatch.setenv("CI", "1")
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return int(exit_info.value.code or 0), out.out, out.err


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    return tiny_official_state_dict(seed=3)


def test_convert_writes_a_checkpoint_that_loads_like_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, official_state
) -> None:
    ckpt = lightning_checkpoint(tmp_path / "scl_pretrain.ckpt", official_state, monkeypatch)
    out = tmp_path / "converted"
    code, stdout, stderr = scl(monkeypatch, capsys, "convert", "--official", str(ckpt), "--out", str(out))
    assert code == 0, stderr
    assert "vision_transformer.visual.transformer.resblocks.*" in stdout and "vision.blocks.*" in stdout
    assert "new: ours only (video frames); zeros" in stdout and "position table cut from 514 to 52" in stderr
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "conversion.json"}

    every_key = json.loads((out / "conversion.json").read_text())
    assert set(every_key["mapped"]) | set(every_key["ignored"]) == set(official_state)

    state, config = read_checkpoint(out)
    assert config["tokenizer"] == "FacebookAI/roberta-base" and config["pad_token_id"] == 1
    assert config["converted_from"]["global_step"] == 12000 and config["step"] == 0
    model = SCLModel(
        ModelConfig.model_validate(config["model"]), config["vocab_size"], config["pad_token_id"]
    )
    load_model_weights(model, state, strict=True)
    assert torch.equal(model.fusion.image_layers[0].crossattention.self.key.weight,
                       official_state["cross_modal_image_layers.0.crossattention.self.key.weight"])  # fmt: skip

    on_the_fly, fly_config = read_checkpoint(ckpt)  # what `--ckpt scl_pretrain.ckpt` gets
    assert fly_config["model"] == config["model"] and fly_config["checkpoint"] == str(ckpt)
    assert state.keys() == on_the_fly.keys()
    assert all(torch.equal(state[k], on_the_fly[k]) for k in state)


def test_unplaceable_key_is_one_line_listing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, official_state
) -> None:
    state = {**official_state, "vision_transformer_m.visual.class_embedding": torch.zeros(128)}
    ckpt = lightning_checkpoint(tmp_path / "momentum.ckpt", state, monkeypatch)
    out = tmp_path / "converted"
    code, _, stderr = scl(monkeypatch, capsys, "convert", "--official", str(ckpt), "--out", str(out))
    assert code == 2 and not out.exists()
    assert stderr.count("\n") == 1 and "[vision_transformer_m.visual.class_embedding]" in stderr
    assert "Traceback" not in stderr

    code, _, stderr = scl(monkeypatch, capsys, "convert", "--official", str(ckpt), "--out", str(tmp_path))
    assert code == 2 and "already exists and is not empty" in stderr


class Callback:
    """A pickled object of arbitrary class: loading it could run any code."""


def test_checkpoint_needing_arbitrary_unpickling_is_refused(tmp_path: Path, official_state) -> None:
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": official_state, "callbacks": Callback()}, path)
    with pytest.raises(CheckpointError, match=r"needs arbitrary unpickling \(it holds .*Callback\).*refuses"):
        read_official_checkpoint(path)
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        read_checkpoint(path)


def test_read_checkpoint_reads_our_run_directories(tmp_path: Path) -> None:
    cfg = ModelConfig(init="random")
    cfg.vision.layers = cfg.text.layers = cfg.fusion.layers = 1
    model = SCLModel(cfg, vocab_size=50, pad_token_id=1)
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    config = {
        "model": cfg.model_dump(mode="json"),
        "vocab_size": 50,
        "pad_token_id": 1,
        "tokenizer": "tokenizer.json",
    }
    saved = save_checkpoint(tmp_path / "run", 7, model, config, None, {"tokenizer.json": tokenizer})
    state, loaded = read_checkpoint(tmp_path / "run")
    assert loaded["step"] == 7 and loaded["checkpoint"] == str(saved)
    assert loaded["tokenizer"] == str((saved / "tokenizer.json").resolve())
    assert state.keys() == model.state_dict().keys()
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nowhere.ckpt")
