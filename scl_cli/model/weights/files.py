"""Weight files as they come: safetensors, weights-only torch files, TorchScript archives
(OpenAI's CLIP `.pt`), or a downloaded model folder holding one of them."""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from scl_cli.errors import CheckpointError, UsageError
from scl_cli.io.tensors import first_line, is_safetensors, load_tensor_file
from scl_cli.model.weights.report import (
    format_keys,
)

if TYPE_CHECKING:
    pass


# Weight files of a downloaded model folder, in order of preference (safetensors first).
WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
)


# ----------------------------------------------------------------------------- resolving a source
def looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.endswith(
        (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".jit")
    )


def read_weight_file(path: Path) -> dict[str, Tensor]:
    """Tensors of a weight file: safetensors, a weights-only torch file, or a TorchScript archive.

    A TorchScript archive (OpenAI's CLIP `.pt` files) is code plus tensors; loading it runs no Python
    pickle, and only its `state_dict()` is kept. Anything needing arbitrary unpickling is refused.
    """
    path = Path(path)
    if not is_safetensors(path) and _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated; CLIP ships in it
                warnings.simplefilter("ignore", FutureWarning)
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except RuntimeError as e:
            raise CheckpointError(f"{path}: unreadable TorchScript archive ({first_line(e)})") from None
    loaded = load_tensor_file(path)
    return unwrap_state_dict(loaded, path)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def unwrap_state_dict(loaded: Any, path: Path) -> dict[str, Tensor]:
    """The tensors of a loaded file, looking inside `state_dict` / `model` wrappers and dropping a
    DDP `module.` prefix."""
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(f"{path} holds no state dict (found {type(loaded).__name__})")
    state = {k: v for k, v in loaded.items() if isinstance(v, Tensor)}
    others = [k for k in loaded if k not in state]
    if others:
        raise CheckpointError(f"{path}: entries that are not tensors: {format_keys(others)}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_folder(folder: Path, field_name: str) -> tuple[dict[str, Tensor], str]:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return read_weight_file(folder / name), str(folder / name)
    raise UsageError(
        f"{folder} ({field_name}): folder holds none of {', '.join(WEIGHT_FILES)}; pass the weight file itself"
    )
