"""`evaluate`: a checkpoint on a task with the official metric (VQA, NLVR2, retrieval).

Every task reads the split once, in manifest order; each image and each caption goes through its
unimodal encoder once, and only the fusion encoder sees pairs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from scl_cli.devices import pick_device
from scl_cli.errors import UsageError
from scl_cli.evaluation.common import EvalReport, resolve_data
from scl_cli.evaluation.nlvr2 import eval_nlvr2
from scl_cli.evaluation.retrieval import eval_retrieval
from scl_cli.evaluation.vqa import eval_vqa
from scl_cli.inference.loading import load_model

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
    dev = pick_device(device)
    loaded = load_model(ckpt)
    loaded.model.to(dev).eval()
    where = resolve_data(loaded.config, data, split, task)
    report_progress = (lambda stage, done: progress(stage, done, None)) if progress else (lambda stage, done: None)
    with torch.no_grad():
        if task == "vqa":
            report = eval_vqa(loaded, where, batch_size, dev, report_progress)
        elif task == "nlvr2":
            report = eval_nlvr2(loaded, where, batch_size, dev, report_progress)
        else:
            saved_task = (loaded.config.get("recipe") or {}).get("task") or {}
            k = rerank if rerank is not None else saved_task.get("rerank", 128)
            report = eval_retrieval(loaded, where, batch_size, dev, report_progress, k)
    report.checkpoint = str(loaded.config.get("checkpoint", ckpt))
    report.seconds = time.perf_counter() - started
    return report
