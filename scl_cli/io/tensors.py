"""Tensor files loaded without running anyone's code: safetensors, or torch files restricted to
tensors and plain containers (`torch.load(weights_only=True)`). Every scl loader goes through here."""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from scl_cli.errors import CheckpointError

ALIASES_KEY = "scl.aliases"  # safetensors metadata: {alias: stored name} of tied tensors


def is_safetensors(path: Path) -> bool:
    """True if the file starts like a safetensors file (8-byte header size, then a JSON header)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and int.from_bytes(head[:8], "little") < os.path.getsize(path) and head[8:] == b"{"


def load_tensor_file(path: Path) -> Any:
    """A safetensors file (tied aliases restored), or a torch file that needs no arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    return load_safetensors(path) if is_safetensors(path) else load_torch_file(path)


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, with the aliases `save_safetensors` stored restored."""
    try:
        state_dict = load_file(path)
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read {path}: {e}") from None
    for alias, name in json.loads(metadata.get(ALIASES_KEY, "{}")).items():
        state_dict[alias] = state_dict[name]
    return state_dict


def save_safetensors(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write a state dict; tied tensors are stored once, their other names kept as aliases."""
    tensors, aliases = dedupe_shared(state_dict)
    save_file(tensors, path, metadata={"format": "pt", ALIASES_KEY: json.dumps(aliases)})


def dedupe_shared(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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


def load_torch_file(path: Path) -> Any:
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
            raise CheckpointError(f"{path} is not a readable torch file: {first_line(detail)}") from None
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
        raise CheckpointError(f"{path} is not a readable torch file: {first_line(e)}") from None


def first_line(e: BaseException | str) -> str:
    """The first line of an error message (the type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


_PLAIN = (torch.Tensor, int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def check_plain(obj: Any, where: str) -> None:
    """Raise TypeError for values `torch.load(weights_only=True)` would refuse: at save time, not at resume."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            check_plain(key, f"{where} key")
            check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, list | tuple | set):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(
            f"{where} is a {type(obj).__name__}; a training state holds only tensors and plain values"
        )
