"""Masked language modelling from the fusion text stream, with the image unmasked.

`gather = "global"`: the mean over the masked tokens of the whole global batch; `"paper"`: each
process's mean over its own masked tokens (the released code's F.cross_entropy, which DDP then
averages over processes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scl_cli.config.objectives import MLMSettings
from scl_cli.distributed import all_reduce_sum, world_size
from scl_cli.objectives.context import StepContext
from scl_cli.objectives.registry import LossOutput, Objective


class MLM(Objective):
    name = "mlm"
    Settings = MLMSettings
    settings: MLMSettings

    def encodings(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("mlm",), ("full",)

    def plan(self, ctx: StepContext) -> None:
        ctx.request_fusion("mlm", text="mlm", image="full")

    def loss(self, ctx: StepContext) -> LossOutput:
        mask = ctx.mlm_mask
        logits = ctx.model.mlm_logits(ctx.fused("mlm").text)
        per_token = F.cross_entropy(logits.flatten(0, 1), ctx.text_ids.flatten(), reduction="none")
        picked = mask.picked.flatten()
        # Mean over the masked tokens of the whole global batch (see distributed.global_mean):
        # the local share total * world / global count, which the trainer's average over ranks
        # logs as the true global mean; the accuracy is shared out the same way.
        if self.settings.gather == "paper":
            share = 1 / picked.sum().to(per_token.dtype).clamp(min=1)
        else:
            share = world_size() / all_reduce_sum(picked.sum()).to(per_token.dtype).clamp(min=1)
        loss = torch.where(picked, per_token, torch.zeros_like(per_token)).sum() * share
        hits = (logits.argmax(dim=-1) == ctx.text_ids) & mask.picked
        return {"loss": loss, "accuracy": (hits.sum() * share).detach()}
