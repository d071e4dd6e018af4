"""Build an `SCLModel` from a checkpoint's weights and config (`model.checkpoint.read_checkpoint`),
for fine-tuning or evaluation.

The architecture comes from the checkpoint; a fine-tuning recipe may change only what does not
change the weights' shapes (image size, by interpolating the position grid; dropout; attention
across frames, which has no weights of its own). The heads
the checkpoint's config.json describes (`"heads"`, see `model.task_heads`) are rebuilt — from the key
names for checkpoints written before that field; heads a fine-tuning objective adds and the
checkpoint lacks are reported as new. Any other missing or unexpected key is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from scl_cli.config.recipe import ModelConfig
from scl_cli.errors import CheckpointError
from scl_cli.model.scl_model import SCLModel
from scl_cli.model.task_heads import add_heads, heads_from_keys
from scl_cli.model.vision import interpolate_positional_embedding

# Recipe fields a fine-tuning run may set differently from the checkpoint (the init fields only say
# how the weights that the checkpoint then replaces were drawn).
ADJUSTABLE = {("vision", "image_size"), ("fusion", "dropout"), ("init",), ("vision", "weights"),
              ("text", "weights"), ("text", "tokenizer"), ("vision", "temporal_attention"),
              ("itc_init",), ("vision", "mask_token_std"),
              ("vision", "temporal_init")}  # fmt: skip


@dataclass
class BuiltModel:
    model: SCLModel
    new_keys: list[str] = field(default_factory=list)  # task-head parameters the checkpoint lacked
    unused_keys: list[str] = field(default_factory=list)  # checkpoint heads no objective uses
    notes: list[str] = field(default_factory=list)


def _explicit_fields(model: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Fields a recipe set explicitly (pydantic `model_fields_set`), as paths -> values."""
    out: dict[tuple[str, ...], Any] = {}
    for name in model.model_fields_set:
        value = getattr(model, name)
        if hasattr(value, "model_fields_set"):
            out.update(_explicit_fields(value, (*prefix, name)))
        else:
            out[(*prefix, name)] = value
    return out


def merge_model_config(saved: ModelConfig, recipe: ModelConfig | None, source: str) -> ModelConfig:
    """The checkpoint's model config with the recipe's adjustable fields; a recipe field that
    contradicts the checkpoint's architecture is an error naming it."""
    if recipe is None:
        return saved
    data = saved.model_dump()
    conflicts = []
    for path, value in _explicit_fields(recipe).items():
        node = data
        for part in path[:-1]:
            node = node[part]
        if path in ADJUSTABLE:
            node[path[-1]] = value
        elif node.get(path[-1]) != value:
            conflicts.append(f"model.{'.'.join(path)} = {value!r} (checkpoint: {node.get(path[-1])!r})")
    if conflicts:
        raise CheckpointError(
            f"{source} has another architecture than the recipe: {'; '.join(conflicts)} — drop these "
            "fields from the recipe (the checkpoint defines them)"
        )
    return ModelConfig.model_validate(data)


def saved_heads(config: dict[str, Any], state: dict[str, torch.Tensor]) -> Any:
    """The heads a checkpoint holds: its config.json's `"heads"`, or for a checkpoint written before
    that field, what its key names show."""
    return config["heads"] if "heads" in config else heads_from_keys(state)


def _resize_position_grid(model: SCLModel, state: dict[str, torch.Tensor], notes: list[str]) -> None:
    key = "vision.positional_embedding"
    want = model.vision.positional_embedding.shape
    if key in state and state[key].shape != want:
        grid = int(round((want[0] - 1) ** 0.5))
        old = int(round((state[key].shape[0] - 1) ** 0.5))
        state[key] = interpolate_positional_embedding(state[key], grid)
        notes.append(f"position grid interpolated {old}x{old} -> {grid}x{grid}")


def build_model(
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    recipe_model: ModelConfig | None = None,
    objectives: dict[str, Any] | None = None,
) -> BuiltModel:
    """`SCLModel` with the weights `state` of a checkpoint whose config.json is `config` (both from
    `read_checkpoint`), the heads of `objectives` added (`Objective.setup_model`) and initialised
    when new. `recipe_model`: a fine-tuning recipe's model table (only `ADJUSTABLE` fields may
    differ from the checkpoint's)."""
    source = str(config.get("checkpoint", "checkpoint"))
    cfg = merge_model_config(ModelConfig.model_validate(config["model"]), recipe_model, source)
    model = SCLModel(cfg, int(config["vocab_size"]), int(config["pad_token_id"]))
    add_heads(model, saved_heads(config, state), source)
    allowed_missing: list[str] = []
    for objective in (objectives or {}).values():
        allowed_missing += objective.setup_model(model)
    notes: list[str] = []
    _resize_position_grid(model, state, notes)
    if "token_type_embeddings.weight" in state:
        rows = state["token_type_embeddings.weight"].shape[0]
        have = model.token_type_embeddings.num_embeddings
        if rows < have:  # NLVR2's third type starts as the image type
            saved = state["token_type_embeddings.weight"]
            state["token_type_embeddings.weight"] = torch.cat([saved, saved[1:2].expand(have - rows, -1)])
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    head_prefixes = ("vqa_head.", "nlvr2_head.", "rank_head.")
    new = [k for k in missing if any(k.startswith(p) for p in allowed_missing)]
    bad_missing = [k for k in missing if k not in new and k != "vision.temporal_embedding"]
    unused = [k for k in state if k not in own and k.startswith(head_prefixes)]
    unexpected = [k for k in state if k not in own and k not in unused]
    mismatched = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own
                  if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if bad_missing or unexpected or mismatched:
        parts = []
        if bad_missing:
            parts.append(f"missing {', '.join(bad_missing[:8])}{' ...' if len(bad_missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        if mismatched:
            parts.append(f"shape mismatch (checkpoint vs model) {', '.join(mismatched[:8])}")
        raise CheckpointError(f"{source} does not fit the model: {'; '.join(parts)}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    for objective in (objectives or {}).values():
        objective.init_new_heads(model, set(new))
    return BuiltModel(model, new, unused, notes)
