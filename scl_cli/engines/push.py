"""Engine of `scl push`: a run's newest checkpoint (or any checkpoint `scl.load` reads) to a Hugging
Face Hub model repo, as the folder `save_pretrained` writes (weights, config.json with the heads,
tokenizer, answer list, model card with the evaluation reports found with the run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scl_cli.errors import UsageError
from scl_cli.inference import SCL
from scl_cli.inference.card import find_reports, read_report
from scl_cli.inference.hub import is_repo_id
from scl_cli.reporting import NullReporter, Reporter


@dataclass
class PushResult:
    repo_id: str
    url: str | None  # the commit on the Hub; None for --out (written, not uploaded)
    folder: Path | None  # --out: where the folder was written
    files: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    reports: int = 0


def push(
    ckpt: Path,
    repo_id: str,
    private: bool | None = None,
    message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    eval_files: list[Path] | None = None,
    out: Path | None = None,
    reporter: Reporter | None = None,
) -> PushResult:
    """Upload `ckpt` to `repo_id` (created when missing); with `out`, write the folder there instead
    of uploading (to look at it first). `eval_files`: more `scl eval` reports for the model card."""
    reporter = reporter or NullReporter()
    if not is_repo_id(repo_id):
        raise UsageError(f"{repo_id}: expected a Hub model id, user/repo")
    reports = []
    for path in eval_files or []:
        report = read_report(Path(path))
        if report is None:
            raise UsageError(f"--eval {path}: not an `scl eval` report (a JSON object with task and metrics)")
        reports.append(report)
    model = SCL.from_pretrained(ckpt, device="cpu")
    card = model.model_card(repo_id, reports)
    count = len(find_reports(model.config.get("checkpoint"))) + len(reports)
    if out is not None:
        folder = model.save_pretrained(out, model_card=card, repo_id=repo_id)
        return PushResult(repo_id, None, folder, sorted(p.name for p in folder.iterdir()), model.heads, count)
    reporter.info(f"uploading {model.source} to https://huggingface.co/{repo_id} ...")
    url = model.push_to_hub(repo_id, private=private, commit_message=message or f"Upload SCL model ({ckpt})",
                            revision=revision, create_pr=create_pr, model_card=card)  # fmt: skip
    return PushResult(repo_id, url, None, [], model.heads, count)
