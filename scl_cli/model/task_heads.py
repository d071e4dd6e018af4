"""Fine-tuning heads (DESIGN §1.1), added to an `SCLModel` by the objective that trains them.

Attribute names match what `scl convert` gives the published fine-tuned heads: `vqa_head`
(official `vqa_classifier`), `nlvr2_head` (`nlvr2_classifier`), `rank_head` (`rank_output`).
"""

from __future__ import annotations

import torch
from torch import nn

from scl_cli.model.scl_model import SCLModel

NLVR2_SECOND_IMAGE_TYPE = 2


def mlp_classifier(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> GELU -> Linear (parameters at indices 0, 1, 3, as published)."""
    head = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    for layer in (head[0], head[3]):
        nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(layer.bias)
    return head


def add_vqa_head(model: SCLModel, answers: int) -> None:
    """`vqa_head`: pooled [B, 2D] -> answer logits [B, answers]."""
    width = 2 * model.config.fusion.width
    model.vqa_head = mlp_classifier(width, width, answers)


def add_nlvr2_head(model: SCLModel) -> None:
    """`nlvr2_head`: the pooled features of the two image passes [B, 4D] -> [B, 2]; also grows the
    token types to three rows (row 2 marks the second image, initialised from the image row)."""
    width = model.config.fusion.width
    model.nlvr2_head = mlp_classifier(4 * width, 2 * width, 2)
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
