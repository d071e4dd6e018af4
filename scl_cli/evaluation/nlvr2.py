"""NLVR2 evaluation: accuracy of the NLVR2 head on a split's image pairs."""

from __future__ import annotations

import torch

from scl_cli.data.task_batches import (
    NLVR2Batcher,
    iter_split,
)
from scl_cli.data.transforms import ImageTransform
from scl_cli.errors import UsageError
from scl_cli.evaluation.common import EvalData, EvalReport, chunks, inference_context, to_device
from scl_cli.inference.loading import LoadedModel
from scl_cli.objectives.nlvr2 import nlvr2_logits


# ----------------------------------------------------------------------------- NLVR2
def eval_nlvr2(loaded: LoadedModel, data: EvalData, batch_size: int, device: torch.device, progress) -> EvalReport:
    model = loaded.model
    if not hasattr(model, "nlvr2_head"):
        raise UsageError(f"{loaded.config.get('checkpoint')}: has no NLVR2 head — fine-tune it first (scl finetune)")
    batcher = NLVR2Batcher(loaded.tokenizer, ImageTransform(model.config.vision.image_size), model.config.text.max_len)
    correct = total = positives = 0
    for chunk in chunks(iter_split(data.root, data.dataset, data.split, data.group), batch_size):
        batch = to_device(batcher([(s, 0, None) for s in chunk]), device)
        pred = nlvr2_logits(inference_context(loaded, batch)).argmax(dim=1)
        correct += int((pred == batch["labels"]).sum())
        positives += int(batch["labels"].sum())
        total += len(chunk)
        progress("nlvr2", total)
    if total == 0:
        raise UsageError(f"{data.dataset}/{data.split}: no NLVR2 samples")
    majority = 100 * max(positives, total - positives) / total
    return EvalReport("nlvr2", "", data.dataset, data.split, total, 0.0, {"accuracy": 100 * correct / total},
                      {"accuracy": majority})  # fmt: skip
