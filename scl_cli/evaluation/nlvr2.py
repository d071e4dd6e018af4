"""NLVR2 evaluation: accuracy of the NLVR2 head on a split's image pairs."""

from __future__ import annotations

from collections import defaultdict

from scl_cli.data.task_batches import (
    NLVR2Batcher,
    iter_split,
    sample_json,
)
from scl_cli.errors import UsageError
from scl_cli.evaluation.common import EvalData, EvalReport, chunks
from scl_cli.inference import SCL


# ----------------------------------------------------------------------------- NLVR2
def eval_nlvr2(model: SCL, data: EvalData, batch_size: int, progress) -> EvalReport:
    model.require_head("nlvr2")
    batcher = NLVR2Batcher(model.tokenizer, model.transform, model.max_len)
    correct = total = positives = 0
    by_type: dict[str, list[bool]] = defaultdict(list)
    for chunk in chunks(iter_split(data.root, data.dataset, data.split, data.group), batch_size):
        batch = batcher([(s, 0, None) for s in chunk])
        logits = model.nlvr2_logits(batch["images"], batch["images2"], batch["text_ids"], batch["text_mask"])
        right = (logits.argmax(dim=1).cpu() == batch["labels"]).tolist()
        correct += sum(right)
        positives += int(batch["labels"].sum())
        total += len(chunk)
        # The shapes pairs name their statement kind; the real NLVR2 has none.
        for sample, hit in zip(chunk, right, strict=True):
            if kind := sample_json(sample).get("type"):
                by_type[kind].append(hit)
        progress("nlvr2", total)
    if total == 0:
        raise UsageError(f"{data.dataset}/{data.split}: no NLVR2 samples")
    majority = 100 * max(positives, total - positives) / total
    metrics = {"accuracy": 100 * correct / total}
    metrics.update(
        {f"accuracy/{kind}": 100 * sum(hits) / len(hits) for kind, hits in sorted(by_type.items())}
    )
    return EvalReport("nlvr2", "", data.dataset, data.split, total, 0.0, metrics, {"accuracy": majority})
