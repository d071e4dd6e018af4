"""Local semantic completion (GLSCL): token-level recovery of masked patches and words.

A third pass fuses the mask-token image (patches replaced, not dropped) with the full text; its
outputs at the masked patches are contrasted against the detached outputs at the same positions of
the unmasked-image pass B. The text outputs at the masked words of pass B are contrasted against
the detached outputs at those positions of pass A (full text). Every masked token of the gathered
batch is a candidate. `weight` applies to each modality's term.

`gather = "paper"`, as the released `compute_scl(token_recover=True)`: the masked words of the whole
batch are all-gathered with the local-slice gradient (1/world of the weight after DDP); the masked
patches are contrasted within the local batch only.
"""

from __future__ import annotations

import torch

from scl_cli.config.objectives import SCLLocalSettings
from scl_cli.objectives.context import StepContext
from scl_cli.objectives.contrastive import symmetric_contrastive_loss, unit
from scl_cli.objectives.registry import LossOutput, Objective


def tokens_at(stream: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """stream [B, S, D], index [B, K] -> [B*K, D]."""
    picked = stream.gather(1, index[..., None].expand(-1, -1, stream.shape[-1]))
    return picked.flatten(0, 1)


class SCLLocal(Objective):
    name = "scl_local"
    Settings = SCLLocalSettings
    settings: SCLLocalSettings

    def encodings(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("full", "scl"), ("full", "drop", "masktok")

    def plan(self, ctx: StepContext) -> None:
        ctx.request_fusion("scl_masked_image", text="full", image="drop")
        ctx.request_fusion("scl_masked_text", text="scl", image="full")
        ctx.request_fusion("scl_masktok_image", text="full", image="masktok")

    def loss(self, ctx: StepContext) -> LossOutput:
        t, paper = self.settings.temperature, self.settings.gather == "paper"
        image_pos = ctx.masked_image_positions()
        pred = tokens_at(ctx.fused("scl_masktok_image").image, image_pos)
        target = tokens_at(ctx.fused("scl_masked_text").image, image_pos).detach()
        image_term = symmetric_contrastive_loss(
            unit(pred), unit(target), t, gather="local" if paper else "global"
        )
        words = ctx.scl_text_mask
        pred = tokens_at(ctx.fused("scl_masked_text").text, words.index)
        target = tokens_at(ctx.fused("scl_masked_image").text, words.index).detach()
        text_term = symmetric_contrastive_loss(
            unit(pred), unit(target), t, valid=words.valid.flatten(), gather="paper" if paper else "global"
        )
        return {"loss": image_term + text_term, "image": image_term.detach(), "text": text_term.detach()}
