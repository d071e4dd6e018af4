"""Global semantic completion (the paper's contribution).

Pass A fuses the patch-dropped image with the full text; pass B the masked text with the full
image. The masked image's global feature (pass A) is pulled towards the unmasked image's global
feature (pass B), and the masked text's (pass B) towards the unmasked text's (pass A). Targets are
detached: a masked modality can only recover its missing semantics through the other one.
For video the image term is computed per frame class token and averaged over frames.

`gather = "paper"`, as the released `compute_scl` (images) and `compute_scl_video` (clips): the image
term is all-gathered with the local-slice gradient (1/world of its weight after DDP); the text term
contrasts the local batch only on image batches (`text_feat_cls` is taken before the gather there)
and is gathered like the image term on clip batches.
"""

from __future__ import annotations

import torch

from scl_cli.config.objectives import SCLGlobalSettings
from scl_cli.objectives.context import StepContext
from scl_cli.objectives.contrastive import symmetric_contrastive_loss, unit
from scl_cli.objectives.registry import LossOutput, Objective


def frame_class_tokens(stream: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, T*(1+n), D] image stream -> [B, T, D] class token of every frame."""
    return stream.unflatten(1, (frames, -1))[:, :, 0]


class SCLGlobal(Objective):
    name = "scl_global"
    Settings = SCLGlobalSettings
    settings: SCLGlobalSettings

    def encodings(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("full", "scl"), ("full", "drop")

    def plan(self, ctx: StepContext) -> None:
        ctx.request_fusion("scl_masked_image", text="full", image="drop")
        ctx.request_fusion("scl_masked_text", text="scl", image="full")

    def loss(self, ctx: StepContext) -> LossOutput:
        t, gather = self.settings.temperature, self.settings.gather
        text_gather = "global" if gather == "global" else ("paper" if ctx.frames > 1 else "local")
        masked_image, masked_text = ctx.fused("scl_masked_image"), ctx.fused("scl_masked_text")
        pred_frames = unit(frame_class_tokens(masked_image.image, ctx.frames))
        target_frames = unit(frame_class_tokens(masked_text.image, ctx.frames).detach())
        image_term = torch.stack(
            [
                symmetric_contrastive_loss(pred_frames[:, f], target_frames[:, f], t, gather=gather)
                for f in range(ctx.frames)
            ]
        ).mean()
        pred_text = unit(masked_text.text[:, 0])
        target_text = unit(masked_image.text[:, 0].detach())
        text_term = symmetric_contrastive_loss(pred_text, target_text, t, gather=text_gather)
        return {"loss": image_term + text_term, "image": image_term.detach(), "text": text_term.detach()}
