"""`evaluate`: a checkpoint on a task with the official metric (VQA, NLVR2, retrieval).

Every task reads the split once, in manifest order; each image and each caption goes through its
unimodal encoder once, and only the fusion encoder sees pairs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from scl_cli.errors import UsageError
from scl_cli.evaluation.common import EvalReport, resolve_data
from scl_cli.evaluation.nlvr2 import eval_nlvr2
from scl_cli.evaluation.retrieval import eval_retrieval
from scl_cli.evaluation.vqa import eval_vqa
from scl_cli.inference import SCL

TASKS = ("vqa", "nlvr2", "retrieval")


def evaluate(
    task: str,
    ckpt: Path,
    data: str | None = None,
    split: str | None = None,
    rerank: int | str | None = None,
    batch_size: int = 32,
    device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
) -> EvalReport:
    """Evaluate checkpoint `ckpt` on `task`; see the module docstring."""
    if task not in TASKS:
        raise UsageError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
    started = time.perf_counter()
    model = SCL.from_pretrained(ckpt, device=device)
    where = resolve_data(model.config, data, split, task)
    report_progress = (
        (lambda stage, done: progress(stage, done, None)) if progress else (lambda stage, done: None)
    )
    if task == "vqa":
        report = eval_vqa(model, where, batch_size, report_progress)
    elif task == "nlvr2":
        report = eval_nlvr2(model, where, batch_size, report_progress)
    else:
        saved_task = (model.config.get("recipe") or {}).get("task") or {}
        k = rerank if rerank is not None else saved_task.get("rerank", 128)
        report = eval_retrieval(model, where, batch_size, report_progress, k)
    report.checkpoint = str(model.config.get("checkpoint", ckpt))
    report.seconds = time.perf_counter() - started
    return report
