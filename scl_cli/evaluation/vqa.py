"""VQA evaluation: answer every question of a split with the VQA head; the official accuracy."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from scl_cli.data.task_batches import (
    VQABatcher,
    human_answers,
    iter_split,
    majority_answer,
    sample_json,
    vqa_answer_vocabulary,
)
from scl_cli.errors import UsageError
from scl_cli.evaluation.common import EvalData, EvalReport, chunks
from scl_cli.inference import SCL
from scl_cli.metrics import normalize_vqa_answer, vqa_accuracy


# ----------------------------------------------------------------------------- VQA
def eval_vqa(model: SCL, data: EvalData, batch_size: int, progress) -> EvalReport:
    model.require_head("vqa")
    # The checkpoint's answer list; a published checkpoint has none: the data set's (VQAv2's answers.json)
    vocab = model.answers if model.answers is not None else vqa_answer_vocabulary(data.root, data.dataset)
    heads = model.module.vqa_head[3].out_features
    if len(vocab) != heads:
        raise UsageError(f"answer vocabulary has {len(vocab)} answers, the VQA head {heads}")
    batcher = VQABatcher(model.tokenizer, model.transform, model.max_len, vocab, max_questions=10**6)
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
        batch = batcher(items)
        logits = model.vqa_logits(
            batch["images"], batch["text_ids"], batch["text_mask"], batch["question_image"]
        )
        answers = [vocab[i] for i in logits.argmax(dim=1).tolist()]
        for q, answer, qid in zip(questions, answers, batch["question_id"].tolist(), strict=True):
            if qid < 0:  # generated questions have no id of their own: number them in split order
                qid = len(predictions)
            predictions[qid] = answer
            humans = human_answers(q)
            if humans and not q.get("answers"):
                # A generated answer ("two") is canonicalised like VQAv2's own answers ("2").
                humans = [normalize_vqa_answer(humans[0])] * len(humans)
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
