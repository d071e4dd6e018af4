"""VQA fine-tuning: soft-score binary cross-entropy over the answer vocabulary (METER/SCL).

A batch holds B images and Q >= B questions (`question_image` [Q] says whose): every image is
encoded once and fused with each of its questions, instead of once per question.
Batch fields: `text_ids`/`text_mask` [Q, L] (questions), `question_image` [Q], `vqa_targets` [Q, A].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scl_cli.config.objectives import VQASettings
from scl_cli.model.task_heads import add_vqa_head
from scl_cli.objectives.context import StepContext
from scl_cli.objectives.contrastive import at_least_fp32
from scl_cli.objectives.registry import LossOutput, Objective


def vqa_logits(ctx: StepContext) -> torch.Tensor:
    """[Q, A] answer logits for the questions of the batch (the head's forward: `SCLModel.vqa_logits`)."""
    model = ctx.model
    return model.vqa_logits(model.embed_text(ctx.text("full")), ctx.text_mask, model.embed_image(ctx.image("full")),
                            ctx.batch["question_image"], ctx.frames)  # fmt: skip


class VQA(Objective):
    name = "vqa"
    Settings = VQASettings
    settings: VQASettings

    def setup_model(self, model: torch.nn.Module) -> list[str]:
        if not hasattr(model, "vqa_head"):
            if self.settings.answers < 1:
                raise ValueError("objectives.vqa.answers is unknown: set it or fine-tune on a VQA data set")
            add_vqa_head(model, self.settings.answers)
        return ["vqa_head."]

    def probe_fields(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows, device = batch["text_ids"].shape[0], batch["text_ids"].device
        answers = model.vqa_head[-1].out_features
        return {
            "question_image": torch.zeros(rows, dtype=torch.long, device=device),
            "vqa_targets": torch.zeros(rows, answers, device=device),
        }

    def loss(self, ctx: StepContext) -> LossOutput:
        logits = at_least_fp32(vqa_logits(ctx))
        targets = ctx.batch["vqa_targets"].to(logits.dtype)
        # Mean over questions of the summed per-answer BCE: the paper code's mean * n_answers.
        loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        best = targets.gather(1, logits.argmax(dim=1, keepdim=True)).mean()
        return {"loss": loss, "score": best.detach()}
