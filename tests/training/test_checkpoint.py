"""Checkpoints: atomic writes, pruning, round trips without unpickling, clear errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from scl_cli.errors import CheckpointError
from scl_cli.io.checkpoints import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)
from scl_cli.io.tensors import load_tensor_file, load_torch_file
from scl_cli.training.state import (
    build_training_state,
    capture_rng_state,
    restore_rng_state,
    restore_training_state,
)

REPO = Path(__file__).resolve().parents[2]


class TiedLM(nn.Module):
    """Embedding and output decoder share one weight, as with `model.tie_mlm_decoder`."""

    def __init__(self, vocab: int = 11, width: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.norm = nn.LayerNorm(width)
        self.decoder = nn.Linear(width, vocab)
        self.decoder.weight = self.embed.weight
        self.register_buffer("positions", torch.arange(4))


def config() -> dict:
    return {"model": {"width": 6}, "vocab_size": 11, "pad_token_id": 1, "recipe": {"optim": {"lr": 1e-3}}}


def save(run: Path, step: int, model: nn.Module | None = None, **kwargs) -> Path:
    return save_checkpoint(run, step, model or TiedLM(), config(), None, **kwargs)


def test_tied_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = TiedLM()
    path = save(tmp_path, 5, source, extra_files={"tokenizer.json": _file(tmp_path / "tok.json", "{}")})
    assert path == tmp_path / "checkpoints" / "step-5"
    assert {p.name for p in path.iterdir()} == {"model.safetensors", "config.json", "tokenizer.json"}

    ckpt = load_checkpoint(path)
    assert ckpt.step == 5 and ckpt.training_state is None
    assert ckpt.config["format"] == "scl-checkpoint" and ckpt.config["version"] == 1
    assert ckpt.config["vocab_size"] == 11 and ckpt.config["recipe"]["optim"]["lr"] == 1e-3
    assert ckpt.tokenizer_path == path / "tokenizer.json"
    assert set(ckpt.state_dict) == set(source.state_dict())

    target = TiedLM()
    load_model_weights(target, ckpt.state_dict)
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    assert target.decoder.weight is target.embed.weight


def test_weights_saved_by_safetensors_save_model_load_too(tmp_path: Path) -> None:
    # save_model keeps only one name of a tied pair; the partner is filled from the model's tie.
    from safetensors.torch import load_file, save_model

    source = TiedLM()
    save_model(source, str(tmp_path / "m.safetensors"))
    state = load_file(tmp_path / "m.safetensors")
    assert len(state) == len(source.state_dict()) - 1
    target = TiedLM()
    load_model_weights(target, state)
    assert torch.equal(target.decoder.weight, source.decoder.weight)


def test_training_state_round_trips_with_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 3))
    for _ in range(3):
        model(torch.randn(5, 4)).square().mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = build_training_state(optimizer, scheduler, micro_batches_consumed=12)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    path = save_checkpoint(tmp_path, 3, model, config(), state)

    # The file itself is plain: it loads with weights_only=True.
    raw = torch.load(path / "training_state.pt", weights_only=True)
    assert raw["step"] == 3 and raw["data_position"] == 12

    fresh = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda s: min(1.0, (s + 1) / 3))
    ckpt = load_checkpoint(tmp_path)
    load_model_weights(fresh, ckpt.state_dict)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert restore_training_state(ckpt.training_state, fresh_opt, fresh_sched) == 12

    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])
    assert fresh_sched.last_epoch == scheduler.last_epoch
    assert fresh_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state[p][key], fresh_opt.state[q][key])


def test_rng_state_round_trip() -> None:
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


def test_training_state_with_objects_is_refused_at_save(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"training_state\['bad'\]"):
        save_checkpoint(tmp_path, 1, TiedLM(), config(), {"bad": object()})
    assert list_checkpoints(tmp_path) == []
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3, 10, 20):
        save(tmp_path, step, keep_last=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-3", "step-10", "step-20"]


def test_prune_never_deletes_the_checkpoint_just_written(tmp_path: Path) -> None:
    save(tmp_path, 100)
    save(tmp_path, 50, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-50", "step-100"]


def test_same_step_is_replaced(tmp_path: Path) -> None:
    save(tmp_path, 7)
    model = TiedLM()
    save(tmp_path, 7, model)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-7"]
    assert torch.equal(load_checkpoint(tmp_path).state_dict["embed.weight"], model.embed.weight)


def test_crashed_save_is_never_returned_and_is_cleaned(tmp_path: Path) -> None:
    save(tmp_path, 1)
    partial = tmp_path / "checkpoints" / ".tmp-step-2-abc"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-1"
    assert load_checkpoint(tmp_path).step == 1

    save(tmp_path, 3)
    assert not partial.exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1", "step-3"]


def test_path_resolution(tmp_path: Path) -> None:
    save(tmp_path, 2)
    newest = save(tmp_path, 12)
    assert latest_checkpoint(tmp_path) == newest
    assert latest_checkpoint(tmp_path / "checkpoints") == newest
    step2 = tmp_path / "checkpoints" / "step-2"
    assert latest_checkpoint(step2) == step2
    assert load_checkpoint(tmp_path).path == newest
    assert load_checkpoint(tmp_path / "checkpoints").step == 12
    assert load_checkpoint(step2).step == 2
    assert load_checkpoint(step2 / "model.safetensors").step == 2
    assert latest_checkpoint(tmp_path / "empty") is None


def test_architecture_mismatch_lists_keys(tmp_path: Path) -> None:
    state = load_checkpoint(save(tmp_path, 1)).state_dict
    state["extra.weight"] = torch.zeros(2)
    del state["norm.bias"]
    state["embed.weight"] = torch.zeros(65, 128)
    with pytest.raises(CheckpointError) as info:
        load_model_weights(TiedLM(), state, source="ckpt-X")
    msg = str(info.value)
    assert msg.startswith("ckpt-X has another architecture")
    assert "missing [norm.bias]" in msg and "unexpected [extra.weight]" in msg
    assert "embed.weight [65, 128] vs [11, 6]" in msg
    assert "\n" not in msg


def test_mismatch_message_is_truncated() -> None:
    state = {f"layer{i}.weight": torch.zeros(1) for i in range(50)}
    with pytest.raises(CheckpointError, match=r"\.\.\. 42 more") as info:
        load_model_weights(TiedLM(), state)
    assert len(str(info.value)) < 1000


def test_non_strict_still_refuses_shape_mismatch(tmp_path: Path) -> None:
    state = dict(TiedLM().state_dict())
    del state["norm.bias"]
    missing, unexpected = load_model_weights(TiedLM(), state, strict=False)
    assert missing == ["norm.bias"] and unexpected == []
    state["norm.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model_weights(TiedLM(), state, strict=False)


def test_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=f"no checkpoint found in {tmp_path}"):
        load_checkpoint(tmp_path)

    ckpt = save(tmp_path, 1)
    config_text = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read .*config.json"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").write_text(json.dumps({**json.loads(config_text), "format": "hf"}))
    with pytest.raises(CheckpointError, match="format is 'hf'"):
        load_checkpoint(ckpt)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(ckpt)


class Opaque:
    """Stands for any pickled Python object (a module, a custom class...)."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"obj": Opaque()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="arbitrary unpickling.*safetensors") as info:
        load_torch_file(tmp_path / "unsafe.pt")
    assert str(tmp_path / "unsafe.pt") in str(info.value)
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_tensor_file(tmp_path / "unsafe.pt")

    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    assert torch.equal(load_tensor_file(tmp_path / "plain.pt")["w"], torch.ones(2))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        load_torch_file(tmp_path / "junk.pt")


def test_training_state_needing_unpickling_is_refused(tmp_path: Path) -> None:
    ckpt = save(tmp_path, 1)
    torch.save({"obj": Opaque()}, ckpt / "training_state.pt")
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_checkpoint(ckpt)
    assert load_checkpoint(ckpt, with_training_state=False).training_state is None


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    from scl_cli.io.checkpoints import save_checkpoint

    run, model, step = Path(sys.argv[1]), torch.nn.Linear(256, 256), 0
    while True:
        step += 1
        with torch.no_grad():
            model.weight.fill_(step)
        state = {"marker": torch.full((20_000,), step)}
        save_checkpoint(run, step, model, {"model": {}}, state, keep_last=2)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while len(list_checkpoints(tmp_path)) < 2 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.poll() is None, child.stderr.read().decode()
        time.sleep(random.uniform(0.05, 0.3))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    ckpt = load_checkpoint(tmp_path)
    assert ckpt.training_state is not None
    assert torch.all(ckpt.state_dict["weight"] == ckpt.step)
    assert torch.all(ckpt.training_state["marker"] == ckpt.step)
    model = nn.Linear(256, 256)
    load_model_weights(model, ckpt.state_dict)

    save_checkpoint(tmp_path, ckpt.step + 1, model, {"model": {}}, None, keep_last=2)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def _file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
