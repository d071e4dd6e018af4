"""VQA evaluation: answer every question of a split with the VQA head; the official accuracy."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from scl_cli.data.task_batches import (
    VQABatcher,
    human_answers,
    iter_split,
    majority_answer,
    sample_json,
    vqa_answer_vocabulary,
)
from scl_cli.data.transforms import ImageTransform
from scl_cli.errors import UsageError
from scl_cli.evaluation.common import EvalData, EvalReport, chunks, inference_context, to_device
from scl_cli.inference.loading import LoadedModel
from scl_cli.metrics import normalize_vqa_answer, vqa_accuracy
from scl_cli.objectives.vqa import vqa_logits


# ----------------------------------------------------------------------------- VQA
def eval_vqa(loaded: LoadedModel, data: EvalData, batch_size: int, device: torch.device, progress) -> EvalReport:
    model = loaded.model
    if not hasattr(model, "vqa_head"):
        raise UsageError(f"{loaded.config.get('checkpoint')}: has no VQA head — fine-tune it first (scl finetune)")
    ckpt_answers = Path(str(loaded.config.get("checkpoint", ""))) / "answers.json"
    vocab = (
        json.loads(ckpt_answers.read_text()) if ckpt_answers.is_file() else vqa_answer_vocabulary(data.root, data.dataset)
    )
    if len(vocab) != model.vqa_head[3].out_features:
        raise UsageError(f"answer vocabulary has {len(vocab)} answers, the VQA head {model.vqa_head[3].out_features}")
    size = model.config.vision.image_size
    batcher = VQABatcher(loaded.tokenizer, ImageTransform(size), model.config.text.max_len, vocab, max_questions=10**6)
    predictions: dict[int, str] = {}
    scores: list[float] = []
    by_type: dict[str, list[float]] = defaultdict(list)
    majority = majority_answer(data.root, data.dataset)
    baseline: list[float] = []
    done = 0
    for chunk in chunks(iter_split(data.root, data.dataset, data.split, data.group), batch_size):
        items = [(s, 0, None) for s in chunk]
        questions = [q for s in chunk for q in sample_json(s).get("vqa", [])]
        if not questions:
            continue
        batch = to_device(batcher(items), device)
        logits = vqa_logits(inference_context(loaded, batch))
        answers = [vocab[i] for i in logits.argmax(dim=1).tolist()]
        for q, answer, qid in zip(questions, answers, batch["question_id"].tolist(), strict=True):
            if qid < 0:  # generated questions have no id of their own: number them in split order
                qid = len(predictions)
            predictions[qid] = answer
            humans = human_answers(q)
            if len(humans) == 1:
                # A generated answer ("two") is canonicalised like VQAv2's own answers ("2").
                humans = [normalize_vqa_answer(humans[0])] * 10
            if humans:
                acc = vqa_accuracy(answer, humans)
                scores.append(acc)
                by_type[q.get("answer_type") or q.get("type") or "all"].append(acc)
                baseline.append(vqa_accuracy(majority, humans))
        done += len(chunk)
        progress("vqa", done)
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {"questions": len(predictions), "majority_answer": majority}
    if scores:
        metrics["accuracy"] = 100 * sum(scores) / len(scores)
        for kind, values in sorted(by_type.items()):
            metrics[f"accuracy/{kind}"] = 100 * sum(values) / len(values)
    details["predictions"] = [{"question_id": q, "answer": a} for q, a in predictions.items()]
    baselines = {"accuracy": 100 * sum(baseline) / len(baseline)} if baseline else {}
    return EvalReport("vqa", "", data.dataset, data.split, len(predictions), 0.0, metrics, baselines, details)
