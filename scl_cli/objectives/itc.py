"""Image-text contrastive loss on the unimodal class tokens, learnable temperature (init 0.07)."""

from __future__ import annotations

import torch

from scl_cli.objectives.contrastive import symmetric_contrastive_loss
from scl_cli.objectives.registry import Objective, register
from scl_cli.training.step_context import StepContext

# Keeps a learned temperature from collapsing to zero (open_clip clamps its logit scale likewise).
MIN_TEMPERATURE = 1e-3


@register
class ITC(Objective):
    name = "itc"
    default_weight = 0.5

    def loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        text, image = ctx.itc()
        temperature = ctx.model.itc_temperature.clamp(min=MIN_TEMPERATURE)
        return {
            "loss": symmetric_contrastive_loss(text, image, temperature),
            "temperature": temperature.detach(),
        }
