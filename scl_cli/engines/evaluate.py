"""Engine of `scl eval`: evaluate a checkpoint with the official metrics (`evaluation.run`) and write
the JSON report (and, for a VQA split without answers, the test-dev submission file); or score a
VQA predictions file without a model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scl_cli.errors import UsageError
from scl_cli.evaluation.common import EvalReport
from scl_cli.evaluation.run import evaluate
from scl_cli.evaluation.vqa_files import score_prediction_files, write_submission
from scl_cli.io.atomic import atomic_write_json
from scl_cli.reporting import NullReporter, Reporter, StageProgress


@dataclass
class EvalRun:
    report: EvalReport
    path: Path  # the JSON report
    submission: Path | None = None  # VQA splits without answers: the file to submit


def parse_rerank(value: str | None) -> int | str | None:
    """`--rerank`: a number of candidates, 0 (ITC only) or 'all'."""
    if value is None:
        return None
    if value != "all" and not value.isdigit():
        raise UsageError(f"--rerank {value!r}: expected a number of candidates, 0, or 'all'")
    return value if value == "all" else int(value)


def evaluate_checkpoint(
    task: str,
    ckpt: Path,
    data: str | None = None,
    split: str | None = None,
    rerank: str | None = None,
    batch_size: int = 32,
    out: Path | None = None,
    reporter: Reporter | None = None,
) -> EvalRun:
    """Evaluate, write the report to `out` (default `eval-TASK.json`), and the VQA submission file
    beside it when the split has no answers."""
    reporter = reporter or NullReporter()
    k = parse_rerank(rerank)
    with StageProgress(reporter) as progress:
        report = evaluate(
            task, ckpt, data=data, split=split, rerank=k, batch_size=batch_size, progress=progress
        )
    path = out or Path(f"eval-{task}.json")
    report.write_json(path)
    run = EvalRun(report, path)
    if task == "vqa" and not report.metrics and report.details.get("predictions"):
        run.submission = path.with_name(path.stem + "-submission.json")
        write_submission(
            run.submission, {p["question_id"]: p["answer"] for p in report.details["predictions"]}
        )
    return run


def score_vqa_predictions(
    predictions: Path, questions: Path | None, annotations: Path | None, out: Path | None = None
) -> dict[str, Any]:
    """VQA accuracy of a predictions file against the official questions and annotations."""
    if questions is None or annotations is None:
        raise UsageError(
            "--predictions scores VQA files: pass it with `vqa --questions Q.json --annotations A.json`"
        )
    scores = score_prediction_files(predictions, questions, annotations)
    if out is not None:
        atomic_write_json(out, scores)
    return scores
