"""Where the text looks in the image: the fusion's text-to-image cross-attention probabilities.

The paper's visualisation and ALIGN-BENCH scripts (IIGROUP/SCL `visualize_*.py`, `align_*.py`)
read the last fusion layer's text-stream cross-attention (queries: text tokens after that layer's
self-attention; keys: the image tokens) and take the maximum over heads. (As released, their
`BertCrossLayer` returns the *self*-attention probabilities in that slot — `outputs[1:-1]` of
the cross-attention is empty — which cannot be reshaped to the patch grid; the cross-attention is
what the scripts and the paper mean, and what is computed here.) SDPA computes no probabilities,
so the chosen layer's inputs are caught by a forward hook and its softmax recomputed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scl_cli.model.attention import QKVAttention, split_heads


@torch.no_grad()
def text_to_image_attention(
    model, text_emb: Tensor, text_mask: Tensor, image_emb: Tensor, layer: int = -1
) -> Tensor:
    """Cross-attention probabilities of fusion text layer `layer`: [B, H, L, S] (text tokens over
    image tokens, every frame's class token included). Inputs as `SCLModel.fuse` takes them."""
    attention: QKVAttention = model.fusion.text_layers[layer].crossattention.self
    caught: dict[str, Tensor | None] = {}

    def hook(_module, args):  # AttentionSublayer calls it as self(x, context, mask)
        caught["x"], caught["context"], caught["mask"] = (*args, None)[:3]

    handle = attention.register_forward_pre_hook(hook)
    try:
        model.fuse(text_emb, text_mask, image_emb)
    finally:
        handle.remove()
    q = split_heads(attention.query(caught["x"]), attention.heads).float()
    k = split_heads(attention.key(caught["context"]), attention.heads).float()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if caught["mask"] is not None:
        scores = scores.masked_fill(~caught["mask"], float("-inf"))
    return scores.softmax(dim=-1)


def patch_maps(probs: Tensor, frames: int, grid: int) -> Tensor:
    """[B, H, L, T*(1+n)] probabilities -> [B, H, L, T, grid, grid]: each frame's patches on its
    grid (the frames' class tokens dropped, as the paper's scripts drop the image class token)."""
    b, h, length, _ = probs.shape
    per_frame = probs.unflatten(-1, (frames, -1))[..., 1:]
    return per_frame.reshape(b, h, length, frames, grid, grid)
