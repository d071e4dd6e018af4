"""Fusion encoder: METER-style co-attention, one stack of post-norm BERT layers per modality.

Each `CrossLayer` attends over its own stream, then from its stream to the other one, then applies
a feed-forward; module names follow BERT (`attention.self.query`, `crossattention.output.LayerNorm`,
`intermediate.dense`, `output.dense` ...) as in the published checkpoint's `cross_modal_*_layers`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from scl_cli.config.recipe import FusionConfig
from scl_cli.model.attention import QKVAttention, padding_mask


@dataclass
class FusionOutput:
    """Fused streams: text [B, L, D], image [B, S, D]."""

    text: Tensor
    image: Tensor


class ResidualOutput(nn.Module):
    """BERT's post-norm residual: LayerNorm(residual + dropout(dense(h)))."""

    def __init__(self, in_dim: int, width: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(h)))


class AttentionSublayer(nn.Module):
    """BERT attention sub-layer: `self` (query/key/value) and `output` (dense + residual LayerNorm)."""

    def __init__(self, width: int, heads: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.self = QKVAttention(width, heads, dropout)
        self.output = ResidualOutput(width, width, dropout, eps)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        """x [B, Lq, w] attends to context [B, Lk, w] under mask [B, 1, 1, Lk] -> [B, Lq, w]."""
        return self.output(self.self(x, context, mask), x)


class Intermediate(nn.Module):
    """BERT feed-forward expansion: GELU(dense(x))."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, hidden)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class CrossLayer(nn.Module):
    """One co-attention layer for stream x given stream y: self-attention, cross-attention, feed-forward.

    x [B, Lx, w], x_mask [B, 1, 1, Lx] bool or None; y [B, Ly, w], y_mask [B, 1, 1, Ly] bool or None.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.attention = AttentionSublayer(width, heads, dropout, eps)
        self.crossattention = AttentionSublayer(width, heads, dropout, eps)
        hidden = int(mlp_ratio * width)
        self.intermediate = Intermediate(width, hidden)
        self.output = ResidualOutput(hidden, width, dropout, eps)

    def forward(self, x: Tensor, x_mask: Tensor | None, y: Tensor, y_mask: Tensor | None) -> Tensor:
        h = self.attention(x, x, x_mask)
        h = self.crossattention(h, y, y_mask)
        return self.output(self.intermediate(h), h)


class FusionEncoder(nn.Module):
    """Two parallel stacks of CrossLayers (`text_layers`, `image_layers`); both streams update from
    the previous layer's outputs."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.config = cfg

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                CrossLayer(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.layer_norm_eps)
                for _ in range(cfg.layers)
            )

        self.text_layers = stack()
        self.image_layers = stack()
        self.gradient_checkpointing: bool = False

    def forward(
        self, text: Tensor, text_mask: Tensor, image: Tensor, image_mask: Tensor | None = None
    ) -> FusionOutput:
        """text [B, L, D], text_mask [B, L] (1 = real), image [B, S, D], image_mask [B, S] or None
        (all real) -> FusionOutput(text [B, L, D], image [B, S, D])."""
        t_mask, i_mask = padding_mask(text_mask), padding_mask(image_mask)
        for text_layer, image_layer in zip(self.text_layers, self.image_layers, strict=True):
            text, image = (
                self._run(text_layer, text, t_mask, image, i_mask),
                self._run(image_layer, image, i_mask, text, t_mask),
            )
        return FusionOutput(text, image)

    def _run(
        self, layer: CrossLayer, x: Tensor, x_mask: Tensor | None, y: Tensor, y_mask: Tensor | None
    ) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(layer, x, x_mask, y, y_mask, use_reentrant=False)
        return layer(x, x_mask, y, y_mask)
