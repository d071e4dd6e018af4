"""Checkpoints: one directory per step, written atomically, loaded without arbitrary unpickling.

Layout (DESIGN §2)::

    RUN/checkpoints/step-N/
        model.safetensors     model state dict (tied tensors stored once, aliases in the metadata)
        config.json           {"format": "scl-checkpoint", "version": 1, "step": N, "model": ..., "recipe": ...}
        tokenizer.json        optional, copied in by the caller (`extra_files`)
        training_state.pt     resumable runs only: optimiser, scheduler, RNG states, data position

A checkpoint is written into `checkpoints/.tmp-*` and renamed to `step-N` once every file is on disk:
the rename is the commit point (`io.atomic`), so a directory named `step-N` is always complete and a
crash leaves only a `.tmp-*` directory that the next save deletes. The training state's content
belongs to `training.state`.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scl_cli.errors import CheckpointError
from scl_cli.io.atomic import (
    atomic_directory,
    fsync_dir,
    fsync_file,
    remove_directory,
    remove_stale_temporaries,
)
from scl_cli.io.tensors import check_plain, load_safetensors, load_torch_file, save_safetensors

FORMAT = "scl-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_STATE_FILE = "training_state.pt"
CHECKPOINTS_DIR = "checkpoints"

_STEP_DIR = re.compile(r"^step-(\d+)$")
_MAX_LISTED = 8


@dataclass
class LoadedCheckpoint:
    """What `load_checkpoint` returns; `state_dict` holds CPU tensors, tied names included."""

    path: Path
    step: int
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    training_state: dict[str, Any] | None

    @property
    def tokenizer_path(self) -> Path | None:
        path = self.path / "tokenizer.json"
        return path if path.is_file() else None


# ----------------------------------------------------------------------------- saving
def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    config: dict[str, Any],
    training_state: dict[str, Any] | None,
    extra_files: dict[str, Path] | None = None,
    keep_last: int | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `RUN/checkpoints/step-<step>/` atomically and prune older checkpoints.

    `config` holds the model config, vocab_size, pad_token_id, recipe and anything else worth
    keeping; `format`, `version` and `step` are set here. `training_state` must hold only tensors
    and plain Python values so that it loads with `torch.load(weights_only=True)` (see
    `training.state`). `extra_files` maps a file name in the checkpoint to a source file (e.g.
    `{"tokenizer.json": path}`). `state_dict` replaces `model.state_dict()` when given (e.g. the
    full state gathered from FSDP shards). Returns the checkpoint directory.
    """
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step}"
    write_checkpoint_dir(final, step, model, config, training_state, extra_files, state_dict)
    fsync_dir(ckpt_root)
    _prune(ckpt_root, keep_last, keep=final)
    return final


def write_checkpoint_dir(
    final: Path,
    step: int,
    model: nn.Module,
    config: dict[str, Any],
    training_state: dict[str, Any] | None = None,
    extra_files: dict[str, Path] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write one checkpoint folder `final` atomically (replacing an older one of that name); the
    arguments as `save_checkpoint`'s. Also for folders outside `checkpoints/` (a run's `best/`)."""
    if training_state is not None:
        check_plain(training_state, "training_state")
    with atomic_directory(Path(final), replace=True, durable=True) as tmp:
        save_safetensors(
            state_dict if state_dict is not None else unwrap(model).state_dict(), tmp / MODEL_FILE
        )
        fsync_file(tmp / MODEL_FILE)
        header = {"format": FORMAT, "version": VERSION, "step": step}
        body = {k: v for k, v in config.items() if k not in header}
        (tmp / CONFIG_FILE).write_text(json.dumps(header | body, indent=2, default=str), encoding="utf-8")
        fsync_file(tmp / CONFIG_FILE)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
            fsync_file(tmp / name)
        if training_state is not None:
            torch.save({"step": step, **training_state}, tmp / TRAINING_STATE_FILE)
            fsync_file(tmp / TRAINING_STATE_FILE)
    return Path(final)


def _prune(ckpt_root: Path, keep_last: int | None, keep: Path) -> None:
    """Delete stale temporaries and all but the newest `keep_last` checkpoints."""
    remove_stale_temporaries(ckpt_root)
    if keep_last is None:
        return
    checkpoints = _checkpoints_in(ckpt_root)
    # The one just written survives even when a resumed run left higher steps behind.
    for old in checkpoints[: max(len(checkpoints) - keep_last, 0)]:
        if old != keep:
            remove_directory(old)


# ----------------------------------------------------------------------------- finding
def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run (`RUN/checkpoints/step-N`), oldest first."""
    return _checkpoints_in(Path(run_dir) / CHECKPOINTS_DIR)


def latest_checkpoint(path: Path) -> Path | None:
    """The newest checkpoint under a run dir or a `checkpoints/` dir, or `path` if it is one."""
    path = Path(path)
    if _is_checkpoint_dir(path):
        return path
    root = path if path.name == CHECKPOINTS_DIR else path / CHECKPOINTS_DIR
    found = _checkpoints_in(root)
    return found[-1] if found else None


def _checkpoints_in(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def _is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and ((path / CONFIG_FILE).exists() or (path / MODEL_FILE).exists())


# ----------------------------------------------------------------------------- loading
def load_checkpoint(path: Path, with_training_state: bool = True) -> LoadedCheckpoint:
    """Load a checkpoint directory, or the newest checkpoint of a run directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file() and path.name in (MODEL_FILE, CONFIG_FILE):
        path = path.parent
    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is None:
        raise CheckpointError(
            f"no checkpoint found in {path}: expected a run directory with checkpoints/step-N/ "
            f"or a directory holding {MODEL_FILE} and {CONFIG_FILE}"
        )
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (ckpt / name).is_file():
            raise CheckpointError(f"checkpoint {ckpt} is incomplete: {name} is missing")

    config = _read_config(ckpt / CONFIG_FILE)
    state_dict = load_safetensors(ckpt / MODEL_FILE)
    training_state = None
    if with_training_state and (ckpt / TRAINING_STATE_FILE).is_file():
        training_state = load_torch_file(ckpt / TRAINING_STATE_FILE)
    return LoadedCheckpoint(ckpt, int(config["step"]), config, state_dict, training_state)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(
            f"{path} is not an scl checkpoint config: format is {found!r}, expected {FORMAT!r}"
        )
    if not isinstance(config.get("version"), int) or config["version"] > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {config.get('version')!r}; this scl reads up to {VERSION}: upgrade scl"
        )
    if not isinstance(config.get("step"), int):
        raise CheckpointError(f"{path} has no integer 'step'")
    return config


def load_model_weights(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    strict: bool = True,
    source: str | Path = "checkpoint",
) -> Any:
    """Load `state_dict` into `model` after checking names and shapes.

    Raises `CheckpointError` naming missing keys, unexpected keys and shape mismatches (the latter
    always; the former only when `strict`). A tied parameter missing from `state_dict` is filled
    from its tied partner. Returns `load_state_dict`'s (missing_keys, unexpected_keys).
    """
    model = unwrap(model)
    own = model.state_dict()
    state_dict = _fill_tied(own, dict(state_dict))
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {list(state_dict[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        if strict and missing:
            parts.append(f"missing {_listed(missing)}")
        if strict and unexpected:
            parts.append(f"unexpected {_listed(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch (checkpoint vs model) {', '.join(_truncate(mismatched))}")
        raise CheckpointError(f"{source} has another architecture: {'; '.join(parts)}")
    return model.load_state_dict(state_dict, strict=strict)


def _fill_tied(own: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give tied model tensors the value of a partner present in `state_dict` (save_model drops them)."""
    by_view: dict[tuple, list[str]] = {}
    for name, tensor in own.items():
        if tensor.device.type != "meta" and tensor.untyped_storage().nbytes() > 0:
            view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            by_view.setdefault(view, []).append(name)
    for names in by_view.values():
        present = [n for n in names if n in state_dict]
        for name in names:
            if present and name not in state_dict:
                state_dict[name] = state_dict[present[0]]
    return state_dict


def _truncate(items: list[str]) -> list[str]:
    return items[:_MAX_LISTED] + (
        [f"... {len(items) - _MAX_LISTED} more"] if len(items) > _MAX_LISTED else []
    )


def _listed(keys: list[str]) -> str:
    return "[" + ", ".join(_truncate(keys)) + "]"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP/FSDP-style (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model
