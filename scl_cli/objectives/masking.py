"""Random masks for one step, drawn on the batch's device with fixed shapes and no host syncs.

Every function returns index tensors of a fixed width (padded where the per-sample count varies,
with a `valid` flag), so the losses built on them never need boolean indexing. Each takes its
uniform noise from the caller (`StepRandom`) or, without it, from the global torch RNG; every
output row depends only on its own noise row, which is what lets `StepRandom` make a sample's
masks independent of how the global batch is split over processes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor


@dataclass(frozen=True)
class TextSpec:
    """What masking needs to know about the tokenizer.

    `continuation` / `collator_skip` ([vocab] bool, optional): what transformers 4.6's whole-word
    collator sees in the token strings — a piece spelled "##..." joins the word before it; "[CLS]"
    and "[SEP]" are never candidates. Only `mlm_selection = "wwm_collator"` reads them; None means
    no such token.
    """

    vocab_size: int
    pad_id: int
    mask_id: int
    special_ids: torch.Tensor  # [S] int64
    word_start: torch.Tensor  # [vocab] bool: token begins a word
    continuation: torch.Tensor | None = None  # [vocab] bool: spelled "##..."
    collator_skip: torch.Tensor | None = None  # [vocab] bool: spelled "[CLS]" or "[SEP]"

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: int | None = None) -> TextSpec:
        """From a tokenizer with `pad_id`, `mask_id`, `special_ids`, `word_start` (and optionally
        `continuation`, `collator_skip`; `data.tokenizer.TextTokenizer`); `vocab_size`: the model's,
        when larger than the tokenizer's."""
        return cls(
            vocab_size or tokenizer.vocab_size, tokenizer.pad_id, tokenizer.mask_id,
            tokenizer.special_ids, tokenizer.word_start,
            _padded(getattr(tokenizer, "continuation", None), vocab_size),
            _padded(getattr(tokenizer, "collator_skip", None), vocab_size),
        )  # fmt: skip

    def to(self, device: torch.device) -> TextSpec:
        return TextSpec(
            self.vocab_size,
            self.pad_id,
            self.mask_id,
            self.special_ids.to(device),
            self.word_start.to(device),
            None if self.continuation is None else self.continuation.to(device),
            None if self.collator_skip is None else self.collator_skip.to(device),
        )


def _padded(flags: torch.Tensor | None, vocab_size: int | None) -> torch.Tensor | None:
    """A tokenizer's [vocab] flags extended with False up to the model's vocabulary; None if none is set
    (ids past the tokenizer's vocabulary only appear as random MLM replacements)."""
    if flags is None or not bool(flags.any()):
        return None
    if vocab_size and vocab_size > flags.shape[0]:
        flags = torch.cat([flags, flags.new_zeros(vocab_size - flags.shape[0])])
    return flags


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


class StepRandom:
    """The random draws of one micro-batch, shared by every rank of a data-parallel run.

    Every draw is made for the whole global batch (`world * rows` rows) from a generator seeded
    by (seed, draw number), and each rank keeps its own `rows` rows (rank order, as the batch is
    split). A sample's masks and ITM negatives are then a function of (seed, draw, its place in
    the global batch): one process on the same global batch draws exactly the same. The price
    is `world` times the noise of one rank — noise, not activations. `draw` counts micro-batches,
    so resuming at micro-batch n draws what the uninterrupted run drew.
    """

    def __init__(
        self, seed: int, draw: int, device: torch.device, rows: int, rank: int = 0, world: int = 1
    ) -> None:
        self.device, self.rows, self.rank, self.world = torch.device(device), rows, rank, world
        self.seed, self.draw = seed, draw
        self._generators: dict[str, torch.Generator] = {}
        self.host = torch.Generator().manual_seed(_seed_of(seed, draw, "host"))

    def generator(self, stream: str) -> torch.Generator | None:
        """The device generator of one named stream: each mask draws from its own, so what it
        draws does not depend on which other draws the step made before it (or in which order)."""
        if self.device.type == "meta":  # shape-only dry runs draw nothing
            return None
        if stream not in self._generators:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(_seed_of(self.seed, self.draw, "device", stream))
            self._generators[stream] = gen
        return self._generators[stream]

    @classmethod
    def from_global_rng(cls, device: torch.device, rows: int) -> StepRandom:
        """One process, seeded from the global torch RNG (a CPU draw: no device sync)."""
        return cls(int(torch.randint(0, 2**62, (1,))), 0, device, rows)

    @property
    def global_rows(self) -> int:
        return self.world * self.rows

    def local(self, x: Tensor) -> Tensor:
        """This rank's rows of a global-batch tensor [world * rows, ...]."""
        return x[self.rank * self.rows : (self.rank + 1) * self.rows]

    def uniform(self, *shape: int, stream: str = "default") -> Tensor:
        """U[0, 1) noise [rows, *shape] on the device: this rank's rows of one global draw."""
        return self.local(self.uniform_global(*shape, stream=stream))

    def uniform_global(self, *shape: int, stream: str = "default") -> Tensor:
        """U[0, 1) noise [world * rows, *shape] on the device (the whole global draw)."""
        return torch.rand(self.global_rows, *shape, generator=self.generator(stream), device=self.device)


def _seed_of(*parts: object) -> int:
    text = "scl-step/" + "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def _uniform(noise: Tensor | None, shape: tuple[int, ...], device: torch.device) -> Tensor:
    if noise is None:
        return torch.rand(shape, device=device)
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
    return noise


def _ranks(noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order of `noise` along the last dim and each element's rank in it."""
    order = noise.argsort(dim=-1)
    return order, order.argsort(dim=-1)


CountRule = Literal["round", "floor"]


def kept_patch_count(patches: int, drop: float, rule: CountRule = "round") -> int:
    """Patches kept by dropping: `patches - round(drop * patches)` ("round"), or the paper's code's
    `int(patches * (1 - drop))` ("floor": 64 of 324 at drop 0.8, where "round" keeps 65). At least one."""
    keep = int(patches * (1 - drop)) if rule == "floor" else patches - round(drop * patches)
    return max(1, keep)


def masked_patch_count(patches: int, ratio: float, rule: CountRule = "round") -> int:
    """Patches replaced by the mask token: `round(ratio * patches)`, or the paper's code's
    `int(patches * ratio)` ("floor"). At least one."""
    return max(1, int(patches * ratio) if rule == "floor" else round(ratio * patches))


def drop_patches(
    batch: int,
    patches: int,
    ratio: float,
    device: torch.device,
    noise: Tensor | None = None,
    rule: CountRule = "round",
) -> PatchDrop:
    """Keep `kept_patch_count(patches, ratio, rule)` random patches per sample.
    `noise`: optional U[0, 1) [batch, patches]."""
    keep = kept_patch_count(patches, ratio, rule)
    order, _ = _ranks(_uniform(noise, (batch, patches), device))
    return PatchDrop(order[:, :keep].sort(dim=-1).values)


def mask_patches(
    batch: int,
    patches: int,
    ratio: float,
    device: torch.device,
    noise: Tensor | None = None,
    rule: CountRule = "round",
) -> PatchMask:
    """Choose exactly `masked_patch_count(patches, ratio, rule)` patches per sample to replace.
    `noise`: optional U[0, 1) [batch, patches]."""
    count = masked_patch_count(patches, ratio, rule)
    order, rank = _ranks(_uniform(noise, (batch, patches), device))
    return PatchMask(rank < count, order[:, :count].sort(dim=-1).values)


def maskable_positions(ids: torch.Tensor, attention: torch.Tensor, spec: TextSpec) -> torch.Tensor:
    """[B, L] bool: real, non-special tokens (the only ones any objective may mask)."""
    return attention.bool() & ~torch.isin(ids, spec.special_ids)


def mask_text_span(
    ids: torch.Tensor,
    attention: torch.Tensor,
    spec: TextSpec,
    ratio: float,
    noise: Tensor | None = None,
    with_replacement: bool = False,
) -> TextMask:
    """Replace round(ratio * n_i) random maskable positions of each caption by <mask> (at least one
    when the caption has any); the picked positions are also returned as a fixed-width index.
    `with_replacement`: the paper's code instead (see `_draw_with_replacement`).
    `noise`: optional U[0, 1) [B, L]."""
    if with_replacement:
        return _draw_with_replacement(ids, attention, spec, ratio, noise)
    maskable = maskable_positions(ids, attention, spec)
    n = maskable.sum(dim=1)
    count = torch.where(n > 0, (n.float() * ratio).round().clamp(min=1), torch.zeros_like(n.float())).long()
    noise = _uniform(noise, tuple(ids.shape), ids.device).masked_fill(~maskable, 2.0)
    order, rank = _ranks(noise)
    picked = rank < count[:, None]
    width = max(1, math.ceil(ratio * ids.shape[1]))
    index = order[:, :width]
    valid = torch.arange(width, device=ids.device)[None, :] < count[:, None]
    return TextMask(ids.masked_fill(picked, spec.mask_id), picked, index, valid)


def _draw_with_replacement(
    ids: torch.Tensor, attention: torch.Tensor, spec: TextSpec, ratio: float, noise: Tensor | None
) -> TextMask:
    """The released `compute_scl`'s text mask: for a caption of n = length - 2 words, int(n * ratio)
    + 1 positions drawn uniformly *with replacement* among positions 1 .. length - 2 (every real
    token but the first and the last), none when n = 0; repeats mask one position. `index` lists
    the distinct picked positions (ascending), `valid` flags them."""
    B, L = ids.shape
    pos = torch.arange(L, device=ids.device)
    length = attention.sum(dim=1, keepdim=True)
    inner = attention.bool() & (pos > 0) & (pos < length - 1)
    n = inner.sum(dim=1)
    # int(n * ratio) + 1, in float64 as Python computes it; none for an empty caption.
    draws = torch.where(n > 0, (n.to(torch.float64) * ratio).floor().long() + 1, torch.zeros_like(n))  # [B]
    width = max(1, int((L - 2) * ratio) + 1)  # the most draws a row of L tokens can get
    u = _uniform(noise, (B, L), ids.device)[:, :width]
    nth = (u.double() * n[:, None]).long().clamp(max=(n[:, None] - 1).clamp(min=0))  # 0 .. n-1
    at = torch.searchsorted(inner.long().cumsum(dim=1), nth + 1)  # the nth inner position
    real = torch.arange(width, device=ids.device)[None, :] < draws[:, None]
    hits = torch.zeros(B, L, dtype=torch.long, device=ids.device).scatter_add_(
        1, at.clamp(max=L - 1), real.long()
    )
    picked = (hits > 0) & inner
    count = picked.sum(dim=1)
    index = torch.where(picked, pos, pos + L).argsort(dim=1)[:, :width]
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
    noise: Tensor | None = None,
    selection: Literal["bernoulli", "wwm_collator"] = "bernoulli",
) -> TextMask:
    """BERT masking: each word (or token) is picked with `prob`; a picked token becomes <mask>
    (`mask_share`), a random token (`random_share`) or stays. `picked` marks the MLM targets.
    `selection = "wwm_collator"` picks as transformers 4.6's whole-word collator does instead (see
    `collator_candidates`; `whole_word` is then implied).
    `noise`: optional U[0, 1) [B, L, 3] (pick, replacement kind, random token)."""
    maskable = maskable_positions(ids, attention, spec)
    B, L = ids.shape
    noise = _uniform(noise, (B, L, 3), ids.device)
    pos = torch.arange(L, device=ids.device).expand(B, L)
    if selection == "wwm_collator":
        picked = collator_candidates(ids, spec, prob, noise[..., 0]) & maskable
        draw = None
    elif whole_word:
        # A token starts a word if the vocabulary says so or if its left neighbour is special
        # (byte-level BPE gives the first word of a caption no leading space marker).
        prev_maskable = torch.cat([torch.zeros_like(maskable[:, :1]), maskable[:, :-1]], dim=1)
        starts = spec.word_start[ids] | ~prev_maskable | ~maskable
        word_start_pos = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
        draw = noise[..., 0].gather(1, word_start_pos)
    else:
        draw = noise[..., 0]
    if draw is not None:
        picked = (draw < prob) & maskable
    how = noise[..., 1]
    to_mask = picked & (how < mask_share)
    to_random = picked & (how >= mask_share) & (how < mask_share + random_share)
    # floor(u * V) can round up to V in float32: clamp.
    random_ids = (noise[..., 2] * spec.vocab_size).long().clamp(max=spec.vocab_size - 1)
    out = torch.where(to_mask, torch.full_like(ids, spec.mask_id), ids)
    out = torch.where(to_random, random_ids, out)
    return TextMask(out, picked)


def collator_candidates(ids: torch.Tensor, spec: TextSpec, prob: float, noise: Tensor) -> torch.Tensor:
    """[B, L] bool: the positions transformers 4.6's `DataCollatorForWholeWordMask._whole_word_mask`
    chooses for ids [B, L] (padded rows, as the paper's code pads every caption to max_text_len),
    before its `mask_tokens` drops special tokens and padding.

    The collator makes candidates of every position but "[CLS]" / "[SEP]" (a piece spelled "##..."
    joins the candidate before it), shuffles them, and takes candidates in that order while they fit
    into max(1, round(L * prob)) positions (Python's round: 8 of 50 at 0.15), skipping one that would
    overflow. Given RoBERTa's tokenizer it sees no "[CLS]"/"[SEP]" and words are not "##"-split, so
    it picks 8 single tokens among all 50 positions, `<s>`, `</s>` and padding included. Here the
    shuffle is the order of `noise` [B, L] (U[0, 1)) at each candidate's first position.
    """
    B, L = ids.shape
    budget = min(512, max(1, int(round(L * prob))))
    pos = torch.arange(L, device=ids.device).expand(B, L)
    none = torch.zeros_like(ids, dtype=torch.bool)
    skip = none if spec.collator_skip is None else spec.collator_skip[ids]
    cont = none if spec.continuation is None else spec.continuation[ids]
    taken = ~skip
    earlier = (taken.long().cumsum(dim=1) - taken.long()) > 0  # a candidate token exists before
    starts = taken & (~cont | ~earlier)
    group = torch.where(starts, pos, torch.full_like(pos, -1)).cummax(dim=1).values.clamp(min=0)
    key = torch.where(starts, noise, torch.full_like(noise, 2.0))
    if spec.continuation is None:  # every candidate is one token: the first `budget` in shuffled order
        chosen = starts & (_ranks(key)[1] < budget)
    else:  # greedy in shuffled order; a candidate that no longer fits is skipped for good
        size = torch.zeros_like(pos).scatter_add_(1, group, taken.long())
        remaining = torch.full((B, 1), budget, dtype=torch.long, device=ids.device)
        last = torch.full((B, 1), -1.0, dtype=noise.dtype, device=ids.device)
        chosen = none
        for _ in range(budget):
            fits = starts & (key > last) & (size <= remaining)
            j = torch.where(fits, key, torch.full_like(key, 3.0)).argmin(dim=1, keepdim=True)
            ok = fits.gather(1, j)
            chosen = chosen | (ok & (pos == j))
            remaining = remaining - torch.where(ok, size.gather(1, j), torch.zeros_like(j))
            last = torch.where(ok, key.gather(1, j), last)
    return chosen.gather(1, group) & taken


def frame_token_index(patch_index: torch.Tensor, frames: int, patches: int) -> torch.Tensor:
    """Map patch indices [B, M] to token positions of the encoded clip [B, T*M]: frame t's patch p
    sits at t * (1 + patches) + 1 + p (each frame starts with its class token)."""
    offsets = torch.arange(frames, device=patch_index.device) * (1 + patches) + 1
    return (offsets[:, None, None] + patch_index[None]).permute(1, 0, 2).reshape(patch_index.shape[0], -1)
