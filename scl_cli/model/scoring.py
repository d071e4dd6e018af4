"""What a retrieval system needs from an `SCLModel`: ITC features of images and texts, their
fusion-space tokens, and the fusion score of (text, image) pairs.

One definition for `scl eval retrieval` and `scl index` / `scl retrieve`, so an index gives the
same rankings as the evaluation of the same checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scl_cli.model.preprocess import to_model_input
from scl_cli.model.scl_model import SCLModel


@torch.no_grad()
def image_features(model: SCLModel, images: Tensor, with_tokens: bool = True) -> tuple[Tensor, Tensor | None]:
    """images [B, T, 3, H, W] (uint8 or normalised) -> (ITC features [B, E], unit length;
    fusion-space tokens [B, T * (1 + n), D] or None). A clip's feature comes from the mean of its
    frame class tokens (`ImageEncoding.global_feature`)."""
    enc = model.encode_image(to_model_input(images))
    itc = model.itc_image(enc)
    return itc, (model.embed_image(enc) if with_tokens else None)


@torch.no_grad()
def text_features(
    model: SCLModel, ids: Tensor, mask: Tensor, with_tokens: bool = True
) -> tuple[Tensor, Tensor | None]:
    """ids, mask [B, L] -> (ITC features [B, E], unit length; fusion-space tokens [B, L, D] or None)."""
    tokens = model.encode_text(ids, mask)
    itc = model.itc_text(tokens, mask)
    return itc, (model.embed_text(tokens) if with_tokens else None)


def fusion_scorer_name(model: SCLModel) -> str:
    return "rank head" if getattr(model, "rank_head", None) is not None else "ITM match logit"


@torch.no_grad()
def fusion_scores(
    model: SCLModel, text_tokens: Tensor, text_mask: Tensor, image_tokens: Tensor, frames: int = 1
) -> Tensor:
    """Fusion score of B (text, image) pairs, higher = better match: the rank head after retrieval
    fine-tuning, the ITM match logit otherwise (zero-shot from a pre-training checkpoint).

    text_tokens [B, L, D], text_mask [B, L], image_tokens [B, S, D] (clips of `frames` frames) -> [B].
    """
    head = getattr(model, "rank_head", None)
    pooled = model.pooled(model.fuse(text_tokens, text_mask, image_tokens), frames)
    out = head(pooled).squeeze(-1) if head is not None else model.itm_logits(pooled)[:, 1]
    return out.float()
