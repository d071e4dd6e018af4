"""A checkpoint ready to use: the model, its tokenizer and its config, from any checkpoint
`--ckpt` names (ours, a run directory, or a published SCL `.ckpt`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scl_cli.config.recipe import ModelConfig
from scl_cli.data.tokenizer import TextTokenizer, load_tokenizer
from scl_cli.model.checkpoint import read_checkpoint
from scl_cli.model.loading import build_model
from scl_cli.model.scl_model import SCLModel


@dataclass
class LoadedModel:
    model: SCLModel
    tokenizer: TextTokenizer
    config: dict[str, Any]
    new_keys: list[str] = field(default_factory=list)  # task-head parameters the checkpoint lacked
    unused_keys: list[str] = field(default_factory=list)  # checkpoint heads no objective uses
    notes: list[str] = field(default_factory=list)


def load_model(
    path: str | Path,
    recipe_model: ModelConfig | None = None,
    objectives: dict[str, Any] | None = None,
    data_root: Path = Path("data"),
) -> LoadedModel:
    """`SCLModel` with the weights of checkpoint `path`, the heads of `objectives` added and
    initialised when new (see `model.loading.build_model`), and the checkpoint's tokenizer."""
    state, config = read_checkpoint(Path(path))
    built = build_model(state, config, recipe_model, objectives)
    tokenizer = load_tokenizer(str(config.get("tokenizer") or "FacebookAI/roberta-base"), data_root, "")
    return LoadedModel(built.model, tokenizer, config, built.new_keys, built.unused_keys, built.notes)
