"""Image-text contrastive loss on the unimodal class tokens, learnable temperature (init 0.07).

`reversed_clips = true` (an scl option, not in the paper) adds, on clip batches, every clip played
backwards as a negative for the captions: in-batch negatives almost never differ from the right
clip only in the order of its frames, so without them nothing teaches the direction of motion
("Test of Time", Bagad et al., CVPR 2023, trains with the same time-reversed negatives).

`order_weight` > 0 adds, on those batches, a time-order term: for each caption, the cross-entropy
of the two-way softmax between its clip and the same clip backwards. Among the 2B candidates of the
batch softmax a caption's one reversal weighs little; measured on the shapes clips, the reversals
alone left the foil test at chance, the order term (with `model.vision.temporal_init = "normal"`)
did not (README, shapes benchmark).

`gather = "paper"`: the released `compute_con` (all-gather whose backward keeps the local slice,
the whole loss on every process): the features train at 1/world of the weight, the temperature
at full weight.
"""

from __future__ import annotations

from scl_cli.config.objectives import ITCSettings
from scl_cli.objectives.context import StepContext
from scl_cli.objectives.contrastive import (
    at_least_fp32,
    autocast_off,
    order_loss,
    symmetric_contrastive_loss,
)
from scl_cli.objectives.registry import LossOutput, Objective

# Keeps a learned temperature from collapsing to zero (open_clip clamps its logit scale likewise).
MIN_TEMPERATURE = 1e-3


class ITC(Objective):
    name = "itc"
    Settings = ITCSettings
    settings: ITCSettings

    def encodings(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("full",), ("full", "reversed") if self.settings.reversed_clips else ("full",)

    def clip_logs(self) -> tuple[str, ...]:
        return ("order", "order/accuracy") if self.settings.order_weight else ()

    def loss(self, ctx: StepContext) -> LossOutput:
        text, image = ctx.itc()
        temperature = ctx.model.itc_temperature.clamp(min=MIN_TEMPERATURE)
        reversed_clips = None
        if self.settings.reversed_clips and ctx.frames > 1:
            reversed_clips = ctx.model.itc_image(ctx.image("reversed"))
        loss = symmetric_contrastive_loss(
            text, image, temperature, extra_b=reversed_clips, gather=self.settings.gather
        )
        out = {"temperature": temperature.detach()}
        if reversed_clips is not None and self.settings.order_weight > 0:
            with autocast_off(text.device.type):  # fp32 logits, as every contrastive logit
                t = at_least_fp32(text)
                forward = (t * at_least_fp32(image)).sum(-1) / temperature
                backward = (t * at_least_fp32(reversed_clips)).sum(-1) / temperature
            order, accuracy = order_loss(forward, backward)
            loss = loss + self.settings.order_weight * order
            out |= {"order": order.detach(), "order/accuracy": accuracy}
        return {"loss": loss, **out}
