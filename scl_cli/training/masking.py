"""Random masks for one step, drawn on the batch's device with fixed shapes and no host syncs.

Every function returns index tensors of a fixed width (padded where the per-sample count varies,
with a `valid` flag), so the losses built on them never need boolean indexing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextSpec:
    """What masking needs to know about the tokenizer."""

    vocab_size: int
    pad_id: int
    mask_id: int
    special_ids: torch.Tensor  # [S] int64
    word_start: torch.Tensor  # [vocab] bool: token begins a word

    def to(self, device: torch.device) -> TextSpec:
        return TextSpec(
            self.vocab_size,
            self.pad_id,
            self.mask_id,
            self.special_ids.to(device),
            self.word_start.to(device),
        )


@dataclass
class PatchDrop:
    """MAE-style dropping: `keep_index` [B, K] patch indices kept (ascending), same for all frames."""

    keep_index: torch.Tensor


@dataclass
class PatchMask:
    """Mask-token replacement: `mask` [B, N] bool, `index` [B, M] masked patch indices."""

    mask: torch.Tensor
    index: torch.Tensor


@dataclass
class TextMask:
    """Masked text: `ids` [B, L] with replacements, `picked` [B, L] bool, and for losses that work
    per position, `index` [B, K] picked positions padded to a fixed K with `valid` [B, K]."""

    ids: torch.Tensor
    picked: torch.Tensor
    index: torch.Tensor | None = None
    valid: torch.Tensor | None = None


def _ranks(noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order of `noise` along the last dim and each element's rank in it."""
    order = noise.argsort(dim=-1)
    return order, order.argsort(dim=-1)


def drop_patches(batch: int, patches: int, ratio: float, device: torch.device) -> PatchDrop:
    """Keep `patches - round(ratio * patches)` random patches per sample (at least one)."""
    keep = max(1, patches - round(ratio * patches))
    order, _ = _ranks(torch.rand(batch, patches, device=device))
    return PatchDrop(order[:, :keep].sort(dim=-1).values)


def mask_patches(batch: int, patches: int, ratio: float, device: torch.device) -> PatchMask:
    """Choose exactly `round(ratio * patches)` (at least one) patches per sample to replace."""
    count = max(1, round(ratio * patches))
    order, rank = _ranks(torch.rand(batch, patches, device=device))
    return PatchMask(rank < count, order[:, :count].sort(dim=-1).values)


def maskable_positions(ids: torch.Tensor, attention: torch.Tensor, spec: TextSpec) -> torch.Tensor:
    """[B, L] bool: real, non-special tokens (the only ones any objective may mask)."""
    return attention.bool() & ~torch.isin(ids, spec.special_ids)


def mask_text_span(ids: torch.Tensor, attention: torch.Tensor, spec: TextSpec, ratio: float) -> TextMask:
    """Replace round(ratio * n_i) random maskable positions of each caption by <mask> (at least one
    when the caption has any); the picked positions are also returned as a fixed-width index."""
    maskable = maskable_positions(ids, attention, spec)
    n = maskable.sum(dim=1)
    count = torch.where(n > 0, (n.float() * ratio).round().clamp(min=1), torch.zeros_like(n.float())).long()
    noise = torch.rand(ids.shape, device=ids.device).masked_fill(~maskable, 2.0)
    order, rank = _ranks(noise)
    picked = rank < count[:, None]
    width = max(1, math.ceil(ratio * ids.shape[1]))
    index = order[:, :width]
    valid = torch.arange(width, device=ids.device)[None, :] < count[:, None]
    return TextMask(ids.masked_fill(picked, spec.mask_id), picked, index, valid)


def mask_words_for_mlm(
    ids: torch.Tensor,
    attention: torch.Tensor,
    spec: TextSpec,
    prob: float,
    whole_word: bool = True,
    mask_share: float = 0.8,
    random_share: float = 0.1,
) -> TextMask:
    """BERT masking: each word (or token) is picked with `prob`; a picked token becomes <mask>
    (`mask_share`), a random token (`random_share`) or stays. `picked` marks the MLM targets."""
    maskable = maskable_positions(ids, attention, spec)
    B, L = ids.shape
    pos = torch.arange(L, device=ids.device).expand(B, L)
    if whole_word:
        # A token starts a word if the vocabulary says so or if its left neighbour is special
        # (byte-level BPE gives the first word of a caption no leading space marker).
        prev_maskable = torch.cat([torch.zeros_like(maskable[:, :1]), maskable[:, :-1]], dim=1)
        starts = spec.word_start[ids] | ~prev_maskable | ~maskable
        word_start_pos = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
        draw = torch.rand(B, L, device=ids.device).gather(1, word_start_pos)
    else:
        draw = torch.rand(B, L, device=ids.device)
    picked = (draw < prob) & maskable
    how = torch.rand(B, L, device=ids.device)
    to_mask = picked & (how < mask_share)
    to_random = picked & (how >= mask_share) & (how < mask_share + random_share)
    random_ids = torch.randint(0, spec.vocab_size, (B, L), device=ids.device)
    out = torch.where(to_mask, torch.full_like(ids, spec.mask_id), ids)
    out = torch.where(to_random, random_ids, out)
    return TextMask(out, picked)


def frame_token_index(patch_index: torch.Tensor, frames: int, patches: int) -> torch.Tensor:
    """Map patch indices [B, M] to token positions of the encoded clip [B, T*M]: frame t's patch p
    sits at t * (1 + patches) + 1 + p (each frame starts with its class token)."""
    offsets = torch.arange(frames, device=patch_index.device) * (1 + patches) + 1
    return (offsets[:, None, None] + patch_index[None]).permute(1, 0, 2).reshape(patch_index.shape[0], -1)
