"""Checkpoints: one directory per step, written atomically, loaded without arbitrary unpickling.

Layout (DESIGN §2)::

    RUN/checkpoints/step-N/
        model.safetensors     model state dict (tied tensors stored once, aliases in the metadata)
        config.json           {"format": "scl-checkpoint", "version": 1, "step": N, "model": ..., "recipe": ...}
        tokenizer.json        optional, copied in by the caller (`extra_files`)
        training_state.pt     resumable runs only: optimiser, scheduler, RNG states, data position

A checkpoint is written into `checkpoints/.tmp-*` and renamed to `step-N` once every file is on disk:
the rename is the commit point, so a directory named `step-N` is always complete and a crash leaves
only a `.tmp-*` directory that the next save deletes.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import secrets
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from scl_cli.errors import CheckpointError

FORMAT = "scl-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_STATE_FILE = "training_state.pt"
CHECKPOINTS_DIR = "checkpoints"
TMP_PREFIX = ".tmp-"

_STEP_DIR = re.compile(r"^step-(\d+)$")
_ALIASES_KEY = "scl.aliases"
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
    keeping; `format`, `version` and `step` are set here. `training_state` (see
    `build_training_state`) must hold only tensors and plain Python values so that it loads with
    `torch.load(weights_only=True)`. `extra_files` maps a file name in the checkpoint to a source
    file (e.g. `{"tokenizer.json": path}`). `state_dict` replaces `model.state_dict()` when given
    (e.g. the full state gathered from FSDP shards). Returns the checkpoint directory.
    """
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step}"
    if training_state is not None:
        _check_plain(training_state, "training_state")

    # Not mkdtemp: its 0700 mode would hide checkpoints from the rest of a shared group.
    tmp = ckpt_root / f"{TMP_PREFIX}step-{step}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        if state_dict is None:
            state_dict = _unwrap(model).state_dict()
        tensors, aliases = _dedupe_shared(state_dict)
        save_file(tensors, tmp / MODEL_FILE, metadata={"format": "pt", _ALIASES_KEY: json.dumps(aliases)})
        _fsync_file(tmp / MODEL_FILE)

        header = {"format": FORMAT, "version": VERSION, "step": step}
        body = {k: v for k, v in config.items() if k not in header}
        _write_synced(tmp / CONFIG_FILE, json.dumps(header | body, indent=2, default=str).encode())

        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
            _fsync_file(tmp / name)

        if training_state is not None:
            state = {"step": step, **training_state}
            torch.save(state, tmp / TRAINING_STATE_FILE)
            _fsync_file(tmp / TRAINING_STATE_FILE)
        _fsync_dir(tmp)
        _commit(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    _fsync_dir(ckpt_root)
    _prune(ckpt_root, keep_last, keep=final)
    return final


def _commit(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` is moved aside first (it then counts as stale)."""
    if final.exists():
        # rename() cannot replace a non-empty directory; between the two renames a crash leaves
        # the older checkpoints in place, which is what a reader should then get.
        aside = final.with_name(f"{TMP_PREFIX}replaced-{final.name}-{os.getpid()}")
        os.rename(final, aside)
        os.rename(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _prune(ckpt_root: Path, keep_last: int | None, keep: Path) -> None:
    """Delete stale `.tmp-*` directories and all but the newest `keep_last` checkpoints."""
    for stale in ckpt_root.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last is None:
        return
    checkpoints = _checkpoints_in(ckpt_root)
    # The one just written survives even when a resumed run left higher steps behind.
    for old in checkpoints[: max(len(checkpoints) - keep_last, 0)]:
        if old != keep:
            _delete(old)


def _delete(checkpoint: Path) -> None:
    """Remove a checkpoint so that a crash midway never leaves a partial `step-N` behind."""
    doomed = checkpoint.with_name(f"{TMP_PREFIX}deleting-{checkpoint.name}-{os.getpid()}")
    os.rename(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _dedupe_shared(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each tied tensor once: returns (tensors, {alias: stored name}).

    safetensors refuses tensors that share memory; identical views (weight tying) become aliases,
    any other overlap is copied.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, tensor in state_dict.items():
        tensor = tensor.detach()
        if tensor.device.type != "meta" and tensor.untyped_storage().nbytes() > 0:
            ptr = tensor.untyped_storage().data_ptr()
            view = (ptr, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
            if view in seen:
                aliases[name] = seen[view]
                continue
            seen[view] = name
            if ptr in storages:
                tensor = tensor.clone()
            storages.add(ptr)
        tensors[name] = tensor.cpu().contiguous()
    return tensors, aliases


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
    state_dict = _load_model_file(ckpt / MODEL_FILE)
    training_state = None
    if with_training_state and (ckpt / TRAINING_STATE_FILE).is_file():
        training_state = refuse_pickle(ckpt / TRAINING_STATE_FILE)
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


def _load_model_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state_dict = load_file(path)
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read {path}: {e}") from None
    for alias, name in json.loads(metadata.get(_ALIASES_KEY, "{}")).items():
        state_dict[alias] = state_dict[name]
    return state_dict


def is_safetensors(path: Path) -> bool:
    """True if the file starts like a safetensors file (8-byte header size, then a JSON header)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and int.from_bytes(head[:8], "little") < os.path.getsize(path) and head[8:] == b"{"


def load_tensor_file(path: Path) -> Any:
    """Load a safetensors file, or a torch file that needs no arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    return _load_model_file(path) if is_safetensors(path) else refuse_pickle(path)


def refuse_pickle(path: Path) -> Any:
    """`torch.load(path, weights_only=True)`, turning a file that needs arbitrary unpickling into a clear error.

    Pickled Python objects can run any code when loaded, so scl only accepts tensors and plain
    containers. Every scl loader of non-safetensors files goes through here.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch reports both refused objects and corrupt files as "Weights only load failed".
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            detail = str(e).split("WeightsUnpickler error:")[-1]
            raise CheckpointError(f"{path} is not a readable torch file: {_first_line(detail)}") from None
        raise CheckpointError(
            f"{path} needs arbitrary unpickling (it holds {found.group(1)}), which scl refuses for safety; "
            "if you trust the file, load it yourself (torch.load(path, weights_only=False)) and re-save "
            "its tensors with safetensors.torch.save_file"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        if "TorchScript" in str(e):
            raise CheckpointError(
                f"{path} is a TorchScript archive, which scl does not load; if you trust it, export its "
                "tensors yourself (torch.jit.load(path).state_dict()) with safetensors.torch.save_file"
            ) from None
        raise CheckpointError(f"{path} is not a readable torch file: {_first_line(e)}") from None


def _first_line(e: BaseException | str) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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
    model = _unwrap(model)
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


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP/FSDP-style (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


# ----------------------------------------------------------------------------- training state
def build_training_state(
    optimizer: torch.optim.Optimizer, scheduler: Any, micro_batches_consumed: int, **extra: Any
) -> dict[str, Any]:
    """The resumable part of a run: optimiser, scheduler, RNG states and the data position."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": capture_rng_state(),
        "data_position": int(micro_batches_consumed),
        **extra,
    }


def restore_training_state(
    training_state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any
) -> int:
    """Restore what `build_training_state` saved; returns the micro-batches consumed so far."""
    optimizer.load_state_dict(training_state["optimizer"])
    if scheduler is not None and training_state.get("scheduler") is not None:
        scheduler.load_state_dict(training_state["scheduler"])
    restore_rng_state(training_state["rng"])
    return int(training_state["data_position"])


def capture_rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy, torch CPU and every CUDA device, as tensors and lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        # int64: torch has no full uint32 support, and the values fit.
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`; CUDA states are restored for the devices present in both."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


_PLAIN = (torch.Tensor, int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def _check_plain(obj: Any, where: str) -> None:
    """Fail at save time, not at resume, on values `torch.load(weights_only=True)` would refuse."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_plain(key, f"{where} key")
            _check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, list | tuple | set):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(
            f"{where} is a {type(obj).__name__}; a training state holds only tensors and plain values"
        )


# ----------------------------------------------------------------------------- durability
def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Makes the rename durable on POSIX; directories cannot be opened this way on Windows.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
