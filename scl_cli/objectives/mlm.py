"""Masked language modelling from the fusion text stream, with the image unmasked."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scl_cli.objectives.registry import Objective, register
from scl_cli.training.distributed import global_mean
from scl_cli.training.step_context import StepContext


@register
class MLM(Objective):
    name = "mlm"

    def plan(self, ctx: StepContext) -> None:
        ctx.request_fusion("mlm", text="mlm", image="full")

    def loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        mask = ctx.mlm_mask
        logits = ctx.model.mlm_logits(ctx.fused("mlm").text)
        per_token = F.cross_entropy(logits.flatten(0, 1), ctx.text_ids.flatten(), reduction="none")
        picked = mask.picked.flatten()
        # Mean over the masked tokens of the whole (gathered) batch.
        loss = global_mean(torch.where(picked, per_token, torch.zeros_like(per_token)).sum(), picked.sum())
        hits = (logits.argmax(dim=-1) == ctx.text_ids) & mask.picked
        accuracy = hits.sum() / mask.picked.sum().clamp(min=1)
        return {"loss": loss, "accuracy": accuracy.detach()}
