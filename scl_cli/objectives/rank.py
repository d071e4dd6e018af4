"""Retrieval fine-tuning ranking loss (METER/SCL): each image scores its caption against sampled
negative captions with the fusion rank head; cross-entropy puts the true caption first.

Negatives are other captions of the batch (their encodings are already there), drawn at random.
With `reversed_clips = true` a clip batch adds one more wrong pair per row: the clip played
backwards with its own caption (see objectives.itc).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scl_cli.config.objectives import RankSettings
from scl_cli.model.task_heads import add_rank_head, init_rank_head_from_itm
from scl_cli.objectives.context import StepContext
from scl_cli.objectives.contrastive import at_least_fp32
from scl_cli.objectives.registry import LossOutput, Objective


def sample_negative_texts(batch: int, count: int, device: torch.device) -> torch.Tensor:
    """[B, count] distinct indices j != i per row, uniformly at random."""
    noise = torch.rand(batch, batch, device=device)
    noise.fill_diagonal_(2.0)
    return noise.argsort(dim=1)[:, :count]


def rank_scores(
    ctx: StepContext,
    image_index: torch.Tensor,
    text_index: torch.Tensor,
    variants: tuple[str, ...] = ("full",),
) -> torch.Tensor:
    """Rank-head score of each (image, text) index pair of the batch, in one fusion pass: [P].

    `image_index` counts through the image variants in order: with ("full", "reversed"), B + i is
    clip i played backwards. Projections come from the step's cache, shared with ITM."""
    model = ctx.model
    bank = (
        torch.cat([ctx.image_embeds(v) for v in variants])
        if len(variants) > 1
        else ctx.image_embeds(variants[0])
    )
    images = bank.index_select(0, image_index)
    texts = ctx.text_embeds("full").index_select(0, text_index)
    out = model.fuse(texts, ctx.text_mask.index_select(0, text_index), images)
    return model.rank_head(model.pooled(out, ctx.frames)).squeeze(-1)


class Rank(Objective):
    name = "rank"
    Settings = RankSettings
    settings: RankSettings

    def setup_model(self, model: torch.nn.Module) -> list[str]:
        if not hasattr(model, "rank_head"):
            add_rank_head(model)
        return ["rank_head."]

    def init_new_heads(self, model: torch.nn.Module, missing: set[str]) -> None:
        if any(k.startswith("rank_head.") for k in missing):
            init_rank_head_from_itm(model)

    def encodings(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("full",), ("full", "reversed") if self.settings.reversed_clips else ("full",)

    def loss(self, ctx: StepContext) -> LossOutput:
        B, device = ctx.batch_size, ctx.device
        count = min(self.settings.negatives, B - 1)
        candidates = torch.cat(
            [torch.arange(B, device=device)[:, None], sample_negative_texts(B, count, device)], dim=1
        )  # [B, 1 + count]; column 0 is the true caption
        image_index = torch.arange(B, device=device).repeat_interleave(1 + count)
        text_index = candidates.flatten()
        variants: tuple[str, ...] = ("full",)
        if self.settings.reversed_clips and ctx.frames > 1:
            # one more wrong pair per row, scored in the same pass: clip i backwards (B + i), caption i
            rows = torch.arange(B, device=device)
            image_index, text_index = torch.cat([image_index, B + rows]), torch.cat([text_index, rows])
            variants = ("full", "reversed")
        flat = at_least_fp32(rank_scores(ctx, image_index, text_index, variants))
        scores = flat[: B * (1 + count)].view(B, 1 + count)
        if len(variants) > 1:
            scores = torch.cat([scores, flat[B * (1 + count) :, None]], dim=1)
        target = torch.zeros(B, dtype=torch.long, device=device)
        accuracy = (scores.argmax(dim=1) == 0).to(torch.float32).mean()
        return {"loss": F.cross_entropy(scores, target), "accuracy": accuracy.detach()}
