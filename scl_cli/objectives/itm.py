"""Image-text matching: binary match on the pooled fusion features, half positives, half negatives.

Negatives reuse the step's unimodal encodings: the text keeps its place and the image is taken
from another sample, either at random (the paper) or in proportion to the ITC similarity (ALBEF's
hard negatives, `negatives = "hard"`). No extra image is loaded or encoded.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from scl_cli.objectives.registry import Objective, ObjectiveSettings, register
from scl_cli.training.step_context import StepContext


class ITMSettings(ObjectiveSettings):
    negatives: Literal["random", "hard"] = "random"


def random_other_index(batch: int, device: torch.device) -> torch.Tensor:
    """[B] for each i a uniformly drawn j != i."""
    shift = torch.randint(1, max(batch, 2), (batch,), device=device)
    return (torch.arange(batch, device=device) + shift) % batch


def hard_other_index(similarity: torch.Tensor) -> torch.Tensor:
    """[B] for each row i a column j != i drawn with probability softmax(similarity_i)."""
    weights = similarity.softmax(dim=1) + 1e-5
    weights = weights.masked_fill(torch.eye(len(weights), dtype=torch.bool, device=weights.device), 0.0)
    return torch.multinomial(weights, 1).squeeze(1)


@register
class ITM(Objective):
    name = "itm"
    Settings = ITMSettings
    settings: ITMSettings

    def plan(self, ctx: StepContext) -> None:
        B, device = ctx.batch_size, ctx.device
        if self.settings.negatives == "hard":
            text, image = ctx.itc()
            with torch.no_grad():
                other = hard_other_index(text @ image.t() / ctx.model.itc_temperature)
        else:
            other = random_other_index(B, device)
        # Exactly half of the pairs are negatives, at random places.
        self.is_negative = torch.randperm(B, device=device) < B // 2
        index = torch.where(self.is_negative, other, torch.arange(B, device=device))
        ctx.request_fusion("itm", text="full", image="full", image_index=index)

    def loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        logits = ctx.model.itm_logits(ctx.pooled("itm"))
        labels = (~self.is_negative).long()
        accuracy = (logits.argmax(dim=1) == labels).to(torch.float32).mean()
        return {"loss": F.cross_entropy(logits, labels), "accuracy": accuracy.detach()}
