"""Image-text contrastive loss on the unimodal class tokens, learnable temperature (init 0.07).

`reversed_clips = true` (an scl option, not in the paper) adds, on clip batches, every clip played
backwards as a negative for the captions: in-batch negatives almost never differ from the right
clip only in the order of its frames, so without them nothing teaches the direction of motion
("Test of Time", Bagad et al., CVPR 2023, trains with the same time-reversed negatives).

`gather = "paper"`: the released `compute_con` (all-gather whose backward keeps the local slice,
the whole loss on every process): the features train at 1/world of the weight, the temperature
at full weight.
"""

from __future__ import annotations

from scl_cli.config.objectives import ITCSettings
from scl_cli.objectives.context import StepContext
from scl_cli.objectives.contrastive import symmetric_contrastive_loss
from scl_cli.objectives.registry import LossOutput, Objective

# Keeps a learned temperature from collapsing to zero (open_clip clamps its logit scale likewise).
MIN_TEMPERATURE = 1e-3


class ITC(Objective):
    name = "itc"
    Settings = ITCSettings
    settings: ITCSettings

    def encodings(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("full",), ("full", "reversed") if self.settings.reversed_clips else ("full",)

    def loss(self, ctx: StepContext) -> LossOutput:
        text, image = ctx.itc()
        temperature = ctx.model.itc_temperature.clamp(min=MIN_TEMPERATURE)
        reversed_clips = None
        if self.settings.reversed_clips and ctx.frames > 1:
            reversed_clips = ctx.model.itc_image(ctx.image("reversed"))
        return {
            "loss": symmetric_contrastive_loss(
                text, image, temperature, extra_b=reversed_clips, gather=self.settings.gather
            ),
            "temperature": temperature.detach(),
        }
