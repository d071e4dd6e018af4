"""NLVR2 fine-tuning: is the statement true of the image pair? Two fusion passes (the second image
with token type 2), pooled features concatenated, a 2-way classifier.

Batch fields: `images` / `images2` [B, T, 3, H, W], `text_ids`/`text_mask` [B, L], `labels` [B].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scl_cli.config.objectives import NLVR2Settings
from scl_cli.model.preprocess import to_model_input
from scl_cli.model.task_heads import add_nlvr2_head
from scl_cli.objectives.context import StepContext
from scl_cli.objectives.contrastive import at_least_fp32
from scl_cli.objectives.registry import LossOutput, Objective


def nlvr2_logits(ctx: StepContext) -> torch.Tensor:
    """[B, 2] logits (the head's forward: `SCLModel.nlvr2_logits`, both image passes in one fusion call)."""
    model = ctx.model
    second = model.encode_image(to_model_input(ctx.batch["images2"]))
    return model.nlvr2_logits(
        model.embed_text(ctx.text("full")), ctx.text_mask, ctx.image("full"), second, ctx.frames
    )


class NLVR2(Objective):
    name = "nlvr2"
    Settings = NLVR2Settings

    def setup_model(self, model: torch.nn.Module) -> list[str]:
        if not hasattr(model, "nlvr2_head"):
            add_nlvr2_head(model)
        return ["nlvr2_head.", "token_type_embeddings."]

    def probe_fields(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = batch["images"].shape[0]
        return {"images2": torch.empty_like(batch["images"]),
                "labels": torch.zeros(rows, dtype=torch.long, device=batch["images"].device)}  # fmt: skip

    def loss(self, ctx: StepContext) -> LossOutput:
        logits = at_least_fp32(nlvr2_logits(ctx))
        labels = ctx.batch["labels"].long()
        accuracy = (logits.argmax(dim=1) == labels).to(torch.float32).mean()
        return {"loss": F.cross_entropy(logits, labels), "accuracy": accuracy.detach()}
