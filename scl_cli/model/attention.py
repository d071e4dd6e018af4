"""Multi-head attention on `scaled_dot_product_attention`, in the two weight layouts the model mirrors.

`PackedSelfAttention` keeps nn.MultiheadAttention's parameter names (packed `in_proj_weight`), so
OpenAI CLIP vision weights load by name; `QKVAttention` keeps BERT's separate `query` / `key` /
`value`, as the fusion layers of the published checkpoint do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def padding_mask(mask: Tensor | None) -> Tensor | None:
    """Key-padding mask for SDPA: [B, S] (nonzero / True = real token) -> bool [B, 1, 1, S] (True = attend)."""
    if mask is None:
        return None
    return mask.bool()[:, None, None, :]


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, S, H * d] -> [B, H, S, d]."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, S, d] -> [B, S, H * d]."""
    return x.transpose(1, 2).flatten(2)


class PackedSelfAttention(nn.Module):
    """Self-attention with nn.MultiheadAttention's parameters: `in_proj_weight` [3w, w] (q; k; v),
    `in_proj_bias` [3w], `out_proj`. Batch-first: [B, S, w] -> [B, S, w]."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B, S, w]; mask: SDPA mask broadcastable to [B, H, S, S] (bool True = attend)."""
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


class QKVAttention(nn.Module):
    """BERT-style attention core (`query`, `key`, `value`; no output projection, which BERT keeps in
    the following `output.dense`). Queries from x [B, Lq, w], keys/values from context [B, Lk, w]."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        """mask: bool [B, 1, 1, Lk] (True = attend) or None -> [B, Lq, w] (heads merged)."""
        q = split_heads(self.query(x), self.heads)
        k = split_heads(self.key(context), self.heads)
        v = split_heads(self.value(context), self.heads)
        # BERT drops attention probabilities during training (attention_probs_dropout_prob).
        p = self.dropout if self.training else 0.0
        return merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p))
