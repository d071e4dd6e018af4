"""VQAv2's own files: read questions, annotations and predictions, score them, write a submission.

Formats (see /work/shared/datasets.md, section VQAv2):
- questions: {"questions": [{"image_id", "question", "question_id"}, ...], ...}
- annotations: {"annotations": [{"question_id", "image_id", "answer_type", "question_type",
  "multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"}, ...]}], ...}
  (`multiple_choice_answer` and `answer_confidence` are not needed for scoring and not required)
- predictions / test-dev submission: [{"question_id": int, "answer": str}, ...]

Every problem is one line naming the file: a path that does not exist or cannot be read is a
`UsageError`; content that is not JSON, lacks a field, has a wrong type, repeats a question id or
does not match the other files is a `DataError`. The questions file defines the questions scored:
each needs an annotation (with the same image) and exactly one prediction, and no prediction may
be for another question - the official script refuses such results too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scl_cli.errors import DataError, UsageError
from scl_cli.io.atomic import atomic_write_text
from scl_cli.metrics.vqa import vqa_scores

_EXAMPLES = 3


def _load_json(path: Path, what: str) -> Any:
    if not path.exists():
        raise UsageError(f"{what} file not found: {path}")
    if not path.is_file():
        raise UsageError(f"{what} path is not a file: {path}")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except OSError as e:
        raise UsageError(f"cannot read {what} file {path}: {e.strerror or e}") from None


def _records(data: Any, path: Path, key: str | None) -> list:
    """The record list: `data[key]` for a JSON object, `data` itself when key is None."""
    if key is None:
        if not isinstance(data, list):
            raise DataError(f'{path}: expected a JSON list of {{"question_id", "answer"}} objects')
        return data
    if not isinstance(data, dict) or key not in data:
        raise DataError(f'{path}: expected a JSON object with a "{key}" list')
    if not isinstance(data[key], list):
        raise DataError(f'{path}: "{key}" must be a list')
    return data[key]


def _field(record: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(record, dict):
        raise DataError(f"{where} must be a JSON object")
    if name not in record:
        raise DataError(f'{where} has no "{name}" field')
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f'{where}: "{name}" must be {_article(expected)}, got {json.dumps(value)[:40]}')
    return value


def _article(name: str) -> str:
    return {"int": "an integer", "str": "a string", "list": "a list"}.get(name, name)


def _by_question_id(records: list, path: Path, key: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    first: dict[int, int] = {}
    for i, record in enumerate(records):
        qid = _field(record, "question_id", int, f"{path}: {key}[{i}]")
        if qid in out:
            raise DataError(f"{path}: question_id {qid} appears twice ({key}[{first[qid]}] and {key}[{i}])")
        out[qid], first[qid] = record, i
    return out


def read_questions(path: str | Path) -> dict[int, dict]:
    """question_id -> question record, in file order."""
    path = Path(path)
    records = _records(_load_json(path, "questions"), path, "questions")
    questions = _by_question_id(records, path, "questions")
    for i, record in enumerate(records):
        _field(record, "image_id", int, f"{path}: questions[{i}]")
        _field(record, "question", str, f"{path}: questions[{i}]")
    return questions


def read_annotations(path: str | Path) -> dict[int, dict]:
    """question_id -> annotation record, with the fields scoring needs checked."""
    path = Path(path)
    records = _records(_load_json(path, "annotations"), path, "annotations")
    annotations = _by_question_id(records, path, "annotations")
    for i, record in enumerate(records):
        where = f"{path}: annotations[{i}]"
        _field(record, "image_id", int, where)
        _field(record, "answer_type", str, where)
        _field(record, "question_type", str, where)
        answers = _field(record, "answers", list, where)
        if not answers:
            raise DataError(f'{where}: "answers" is empty')
        for j, answer in enumerate(answers):
            _field(answer, "answer", str, f"{where}.answers[{j}]")
    return annotations


def read_predictions(path: str | Path) -> dict[int, str]:
    """question_id -> predicted answer, from a results / submission file."""
    path = Path(path)
    records = _records(_load_json(path, "predictions"), path, None)
    by_id = _by_question_id(records, path, "predictions")
    return {
        qid: _field(record, "answer", str, f"{path}: predictions[{i}]")
        for i, (qid, record) in enumerate(by_id.items())
    }


def _examples(ids: list[int]) -> str:
    shown = ", ".join(str(q) for q in ids[:_EXAMPLES])
    return f"e.g. {shown}" + (", ..." if len(ids) > _EXAMPLES else "")


def score_prediction_files(
    pred_path: str | Path, questions_path: str | Path, annotations_path: str | Path
) -> dict[str, Any]:
    """Official VQA accuracy of a predictions file: the `vqa_scores` report plus
    "n_predictions" and "n_annotations" (the file's counts; "n_questions" is the number scored)."""
    pred_path, questions_path, annotations_path = (
        Path(pred_path),
        Path(questions_path),
        Path(annotations_path),
    )
    for path, what in (
        (pred_path, "predictions"),
        (questions_path, "questions"),
        (annotations_path, "annotations"),
    ):
        if not path.exists():  # before reading hundreds of MB of the others
            raise UsageError(f"{what} file not found: {path}")
    questions = read_questions(questions_path)
    annotations = read_annotations(annotations_path)
    predictions = read_predictions(pred_path)

    no_ann = [q for q in questions if q not in annotations]
    if no_ann:
        raise DataError(
            f"{annotations_path}: no annotation for {len(no_ann)} of {len(questions)} questions in "
            f"{questions_path} ({_examples(no_ann)}); are both files from the same split?"
        )
    other_image = [q for q in questions if questions[q]["image_id"] != annotations[q]["image_id"]]
    if other_image:
        raise DataError(
            f"{annotations_path}: {len(other_image)} annotations name another image than {questions_path} "
            f"({_examples(other_image)}); are both files from the same split?"
        )
    unknown = [q for q in predictions if q not in questions]
    if unknown:
        raise DataError(
            f"{pred_path}: {len(unknown)} predictions are for question ids not in {questions_path} "
            f"({_examples(unknown)})"
        )
    missing = [q for q in questions if q not in predictions]
    if missing:
        raise DataError(
            f"{pred_path}: {len(missing)} of {len(questions)} questions in {questions_path} have no prediction "
            f"({_examples(missing)}); the official evaluation needs an answer for every question"
        )
    report = vqa_scores(predictions, questions, annotations)
    report["n_predictions"] = len(predictions)
    report["n_annotations"] = len(annotations)
    return report


def write_submission(path: str | Path, predictions: Mapping[int, str]) -> Path:
    """Write `[{"question_id", "answer"}, ...]` (EvalAI's VQA submission format), sorted by
    question id, atomically (temporary file + rename); returns the path."""
    path = Path(path)
    for qid, answer in predictions.items():
        if not isinstance(qid, int) or isinstance(qid, bool) or not isinstance(answer, str):
            raise UsageError(
                f"{path}: a submission maps int question_id -> str answer, got {qid!r} -> {answer!r}"
            )
    rows = [{"question_id": qid, "answer": predictions[qid]} for qid in sorted(predictions)]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rows, ensure_ascii=False))
    return path
