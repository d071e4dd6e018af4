"""VQA fine-tuning: soft-score binary cross-entropy over the answer vocabulary (METER/SCL).

A batch holds B images and Q >= B questions (`question_image` [Q] says whose): every image is
encoded once and fused with each of its questions, instead of once per question.
Batch fields: `text_ids`/`text_mask` [Q, L] (questions), `question_image` [Q], `vqa_targets` [Q, A].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from scl_cli.model.task_heads import add_vqa_head
from scl_cli.objectives.contrastive import at_least_fp32
from scl_cli.objectives.registry import Objective, ObjectiveSettings, register
from scl_cli.training.step_context import StepContext


class VQASettings(ObjectiveSettings):
    answers: int = Field(0, ge=0, description="Answer vocabulary size; 0 = that of the data set.")


def vqa_logits(ctx: StepContext) -> torch.Tensor:
    """[Q, A] answer logits for the questions of the batch."""
    model = ctx.model
    image = model.embed_image(ctx.image("full")).index_select(0, ctx.batch["question_image"])
    out = model.fuse(model.embed_text(ctx.text("full")), ctx.text_mask, image)
    return model.vqa_head(model.pooled(out, ctx.frames))


@register
class VQA(Objective):
    name = "vqa"
    pretraining = False
    Settings = VQASettings
    settings: VQASettings

    def setup_model(self, model: torch.nn.Module) -> list[str]:
        if not hasattr(model, "vqa_head"):
            if self.settings.answers < 1:
                raise ValueError("objectives.vqa.answers is unknown: set it or fine-tune on a VQA data set")
            add_vqa_head(model, self.settings.answers)
        return ["vqa_head."]

    def loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        logits = at_least_fp32(vqa_logits(ctx))
        targets = ctx.batch["vqa_targets"].to(logits.dtype)
        # Mean over questions of the summed per-answer BCE: the paper code's mean * n_answers.
        loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        best = targets.gather(1, logits.argmax(dim=1, keepdim=True)).mean()
        return {"loss": loss, "score": best.detach()}
