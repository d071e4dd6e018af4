"""Fine-tuning heads (DESIGN §1.1): how each is built, and how a checkpoint's config.json describes
them (`describe_heads` writes, `add_heads` rebuilds), so a checkpoint rebuilds from its own folder.
Their forward passes are `SCLModel` methods (`vqa_logits`, `nlvr2_logits`, `match_scores`).

Attribute names match what `scl convert` gives the published fine-tuned heads: `vqa_head`
(official `vqa_classifier`), `nlvr2_head` (`nlvr2_classifier`), `rank_head` (`rank_output`).

config.json, `"heads"` (absent: no head; checkpoints older than this field are read by key names,
`heads_from_keys`)::

    {"vqa": {"answers": 3129, "hidden": 1536, "vocabulary": "answers.json"},
     "nlvr2": {"hidden": 1536, "token_types": 3},
     "rank": {}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from scl_cli.errors import CheckpointError
from scl_cli.model.scl_model import SECOND_IMAGE_TYPE, TASK_HEADS, SCLModel

NLVR2_SECOND_IMAGE_TYPE = SECOND_IMAGE_TYPE
VQA_VOCABULARY_FILE = "answers.json"


def mlp_classifier(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> GELU -> Linear (parameters at indices 0, 1, 3, as published)."""
    head = nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_dim)
    )
    for layer in (head[0], head[3]):
        nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(layer.bias)
    return head


def add_vqa_head(model: SCLModel, answers: int, hidden: int | None = None) -> None:
    """`vqa_head`: pooled [B, 2D] -> answer logits [B, answers]."""
    width = 2 * model.config.fusion.width
    model.vqa_head = mlp_classifier(width, hidden or width, answers)


def add_nlvr2_head(model: SCLModel, hidden: int | None = None) -> None:
    """`nlvr2_head`: the pooled features of the two image passes [B, 4D] -> [B, 2]; also grows the
    token types to three rows (row 2 marks the second image, initialised from the image row)."""
    width = model.config.fusion.width
    model.nlvr2_head = mlp_classifier(4 * width, hidden or 2 * width, 2)
    old = model.token_type_embeddings
    if old.num_embeddings < 3:
        grown = nn.Embedding(3, width).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            grown.weight[:2] = old.weight
            grown.weight[2] = old.weight[1]
        model.token_type_embeddings = grown


def add_rank_head(model: SCLModel) -> None:
    """`rank_head`: pooled [B, 2D] -> one retrieval score [B, 1]."""
    model.rank_head = nn.Linear(2 * model.config.fusion.width, 1)


def init_rank_head_from_itm(model: SCLModel) -> None:
    """Start the rank score as the ITM "match" logit (METER/SCL retrieval fine-tuning)."""
    with torch.no_grad():
        model.rank_head.weight.copy_(model.itm_head.fc.weight[1:2])
        model.rank_head.bias.copy_(model.itm_head.fc.bias[1:2])


# ----------------------------------------------------------------------------- config.json
def describe_heads(model: SCLModel, vocabulary: str | None = None) -> dict[str, dict[str, Any]]:
    """The `"heads"` entry of config.json for the heads `model` has. `vocabulary`: the VQA answer
    file written beside the weights (one answer per output, in order), if any."""
    heads: dict[str, dict[str, Any]] = {}
    if model.has_head("vqa"):
        vqa = model.vqa_head
        heads["vqa"] = {"answers": vqa[3].out_features, "hidden": vqa[0].out_features}
        if vocabulary:
            heads["vqa"]["vocabulary"] = vocabulary
    if model.has_head("nlvr2"):
        heads["nlvr2"] = {"hidden": model.nlvr2_head[0].out_features, "token_types": 3}
    if model.has_head("rank"):
        heads["rank"] = {}
    return heads


def add_heads(model: SCLModel, heads: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Build the heads a config.json `"heads"` entry describes (weights still to be loaded)."""
    if not isinstance(heads, Mapping):
        raise CheckpointError(f"{source}: config.json 'heads' must be an object, got {type(heads).__name__}")
    unknown = sorted(set(heads) - set(TASK_HEADS))
    if unknown:
        raise CheckpointError(
            f"{source}: config.json names unknown heads {unknown} (known: {', '.join(TASK_HEADS)})"
        )
    for name, spec in heads.items():
        spec = spec or {}
        if name == "vqa":
            answers = spec.get("answers")
            if not isinstance(answers, int) or answers < 1:
                raise CheckpointError(f"{source}: config.json heads.vqa.answers must be a positive integer")
            add_vqa_head(model, answers, spec.get("hidden"))
        elif name == "nlvr2":
            add_nlvr2_head(model, spec.get("hidden"))
        else:
            add_rank_head(model)


def heads_from_keys(shapes: Mapping[str, Sequence[int] | torch.Tensor]) -> dict[str, dict[str, Any]]:
    """What `describe_heads` would say of a state dict (key -> tensor or shape): for checkpoints
    written before config.json described its heads, and for converted published checkpoints."""

    def shape(key: str) -> tuple[int, ...]:
        value = shapes[key]
        return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)

    heads: dict[str, dict[str, Any]] = {}
    if "vqa_head.3.weight" in shapes:
        heads["vqa"] = {"answers": shape("vqa_head.3.weight")[0], "hidden": shape("vqa_head.0.weight")[0]}
    if "nlvr2_head.0.weight" in shapes:
        heads["nlvr2"] = {"hidden": shape("nlvr2_head.0.weight")[0], "token_types": 3}
    if "rank_head.weight" in shapes:
        heads["rank"] = {}
    return heads
