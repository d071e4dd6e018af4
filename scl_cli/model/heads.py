"""Small heads on top of the fusion encoder: poolers, ITM, MLM and the ITC projections.

Names follow the published checkpoint (`dense`, `fc`, `transform.dense`, `decoder`, `bias`,
Sequential indices 0, 1, 3), so a converter only renames the prefixes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Pooler(nn.Module):
    """tanh(dense(x)): [B, D] -> [B, D]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x))


class ITMHead(nn.Module):
    """Image-text match logits: [B, in_dim] -> [B, 2] (index 1 = match)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class MLMTransform(nn.Module):
    """BERT prediction transform: LayerNorm(GELU(dense(x)))."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.act = nn.GELU()
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class MLMHead(nn.Module):
    """Masked-token logits: [B, L, width] -> [B, L, vocab]. The decoder has no bias of its own; the
    separate `bias` stays when the decoder weight is tied to the word embeddings."""

    def __init__(self, width: int, vocab_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.transform = MLMTransform(width, eps)
        self.decoder = nn.Linear(width, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def tie_to(self, embedding: nn.Embedding) -> None:
        """Share the decoder weight with a word-embedding table [vocab, width]."""
        if embedding.weight.shape != self.decoder.weight.shape:
            raise ValueError(
                f"cannot tie the MLM decoder {tuple(self.decoder.weight.shape)} to word embeddings "
                f"{tuple(embedding.weight.shape)}"
            )
        self.decoder.weight = embedding.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x)) + self.bias


class ITCProjection(nn.Sequential):
    """Contrastive projection: Linear -> LayerNorm -> GELU -> Linear, [B, width] -> [B, out_dim]."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, out_dim))
