"""Any checkpoint `--ckpt` may name, read into our layout: our checkpoint folders and run folders,
or a published SCL checkpoint (a PyTorch Lightning `.ckpt`, a bare state dict, safetensors)
converted in memory. Nothing here unpickles arbitrary objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scl_cli import __version__
from scl_cli.errors import CheckpointError
from scl_cli.io.checkpoints import CONFIG_FILE, FORMAT, MODEL_FILE, VERSION, load_checkpoint
from scl_cli.io.tensors import is_safetensors, load_tensor_file, load_torch_file
from scl_cli.model.official import OFFICIAL_TOKENIZER, ConvertReport, convert_official_state_dict
from scl_cli.model.task_heads import heads_from_keys

# Plain dict subclasses that PyTorch Lightning stores its hyper-parameters in. Read back as plain
# dicts: nothing of Lightning's code runs, and everything else still needs weights_only=True.
_LIGHTNING_CONTAINERS = [
    (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (dict, "lightning.fabric.utilities.data.AttributeDict"),
    (dict, "lightning_fabric.utilities.data.AttributeDict"),
]
_META_KEYS = ("epoch", "global_step", "pytorch-lightning_version")


def read_official_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(weights, metadata) of a published checkpoint: a Lightning `.ckpt` (weights under `state_dict`),
    a bare state dict, or a safetensors file. Loaded with `torch.load(weights_only=True)`; a file
    that needs arbitrary unpickling is refused with an explanation (`CheckpointError`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if is_safetensors(path):
        return load_tensor_file(path), {}
    with torch.serialization.safe_globals(_LIGHTNING_CONTAINERS):
        loaded = load_torch_file(path)
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a checkpoint")
    meta = {k: loaded[k] for k in _META_KEYS if isinstance(loaded.get(k), int | str)}
    for key in ("state_dict", "model"):
        if isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    state = {k: v for k, v in loaded.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(f"{path} holds no weights (no `state_dict` of tensors)")
    others = sorted(k for k in loaded if k not in state)
    if others:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {others[:10]}")
    return state, meta


def converted_config(report: ConvertReport, meta: dict[str, Any], state: dict[str, Tensor]) -> dict[str, Any]:
    """config.json of a converted checkpoint (`state`: the converted weights): the fields
    `training.checkpointing.checkpoint_config` writes (no recipe, which the official run did not
    have), its fine-tuned heads (`model.task_heads`; a published VQA head comes without its answer
    list), and where the weights came from."""
    assert report.config is not None
    return {
        "format": FORMAT,
        "version": VERSION,
        "step": 0,
        "scl_version": __version__,
        "model": report.config.model_dump(mode="json"),
        "vocab_size": report.vocab_size,
        "pad_token_id": report.pad_token_id,
        # A converted checkpoint has no tokenizer file: loaders resolve this name with `load_tokenizer`.
        "tokenizer": OFFICIAL_TOKENIZER,
        "converted_from": {"path": str(report.source), "layout": report.layout, **meta},
        "heads": heads_from_keys({k: v for k, v in state.items() if k in set(report.heads.values())}),
    }


def read_checkpoint(path: Path, max_len: int = 50) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Weights and config of any checkpoint `--ckpt` may name, in our layout.

    `path` is one of ours (a checkpoint directory, a run directory -> its newest checkpoint, or the
    `model.safetensors` / `config.json` inside one) or any other file, read as a published SCL
    checkpoint and converted in memory (`max_len` as in `convert_official`).

    Returns (state_dict, config). state_dict: CPU tensors named as `SCLModel.state_dict()`, plus
    fine-tuned heads (`vqa_head.*`, `nlvr2_head.*`, `rank_head.*`) when the checkpoint has them.
    config: the checkpoint's config.json (`model`, `vocab_size`, `pad_token_id`, `tokenizer`, ...);
    `tokenizer` is an absolute path when the checkpoint holds its tokenizer file, otherwise a name or
    path for `load_tokenizer`; `checkpoint` is where the weights came from. Rebuild the network with
    `SCLModel(ModelConfig.model_validate(config["model"]), config["vocab_size"], config["pad_token_id"])`
    (not `from_recipe_model`, which would start a pretrained initialisation first).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir() or path.name in (MODEL_FILE, CONFIG_FILE):
        ckpt = load_checkpoint(path, with_training_state=False)
        config = dict(ckpt.config)
        tokenizer = config.get("tokenizer")
        if isinstance(tokenizer, str) and (ckpt.path / tokenizer).is_file():
            config["tokenizer"] = str((ckpt.path / tokenizer).resolve())
        config["checkpoint"] = str(ckpt.path)
        return ckpt.state_dict, config
    state, meta = read_official_checkpoint(path)
    converted, report = convert_official_state_dict(state, str(path), max_len)
    config = converted_config(report, meta, converted)
    config["checkpoint"] = str(path)
    return converted, config
