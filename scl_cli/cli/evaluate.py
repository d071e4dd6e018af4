"""`scl eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scl_cli.cli.app import PlainOpt, app


@app.command("eval")
def eval_(
    task: Annotated[str, typer.Argument(help="vqa | nlvr2 | retrieval")],
    ckpt: Annotated[
        Path | None,
        typer.Option(
            "--ckpt", help="Checkpoint dir, run dir (newest checkpoint) or a published SCL .ckpt file."
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Data set folder (with manifest.json) or name under the data root."),
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Split to evaluate (default: the task's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="JSON report path (default: eval-TASK.json).")
    ] = None,
    rerank: Annotated[
        str | None,
        typer.Option(
            "--rerank", help="Retrieval: re-rank the top K by the fusion score; 0 = ITC only; 'all'."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per encoder batch.")] = 32,
    predictions: Annotated[
        Path | None, typer.Option("--predictions", help="vqa: score this predictions file without a model.")
    ] = None,
    questions: Annotated[Path | None, typer.Option("--questions", help="vqa: VQAv2 questions JSON.")] = None,
    annotations: Annotated[
        Path | None, typer.Option("--annotations", help="vqa: VQAv2 annotations JSON.")
    ] = None,
    plain: PlainOpt = False,
) -> None:
    """Evaluate with the official metrics; prints a table and writes a JSON report."""
    from scl_cli.engines.evaluate import evaluate_checkpoint, score_vqa_predictions
    from scl_cli.errors import UsageError
    from scl_cli.reporting import make_reporter

    reporter = make_reporter(force_plain=plain)
    if predictions is not None:
        if task != "vqa":
            raise UsageError(
                "--predictions scores VQA files: pass it with `vqa --questions Q.json --annotations A.json`"
            )
        scores = score_vqa_predictions(predictions, questions, annotations, out)
        rows = [
            [k, f"{v:.2f}" if isinstance(v, float) else str(v)]
            for k, v in scores.items()
            if not isinstance(v, dict)
        ]
        reporter.table(f"VQA accuracy of {predictions}", ["metric", "value"], rows)
        return
    if ckpt is None:
        raise UsageError("pass --ckpt CHECKPOINT (or --predictions for scoring a VQA predictions file)")
    run = evaluate_checkpoint(task, ckpt, data, split, rerank, batch_size, out, reporter)
    report = run.report
    reporter.table(f"{report.task} on {report.dataset}/{report.split} ({report.samples} samples, "
                   f"{report.seconds:.1f} s)", ["metric", "value", "baseline"], report.rows())  # fmt: skip
    if run.submission is not None:
        reporter.info(f"no answers in this split: wrote the submission file {run.submission}")
    reporter.info(f"report: {run.path}")
