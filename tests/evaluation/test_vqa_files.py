"""VQAv2 files: scoring a predictions file, every error case, writing a submission."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scl_cli.errors import DataError, UsageError
from scl_cli.evaluation.vqa_files import (
    read_predictions,
    score_prediction_files,
    write_submission,
)


def _annotation(qid: int, image_id: int, answers: list[str], answer_type: str, question_type: str) -> dict:
    return {
        "question_id": qid,
        "image_id": image_id,
        "answer_type": answer_type,
        "question_type": question_type,
        "multiple_choice_answer": answers[0],
        "answers": [
            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
        ],
    }


ANNOTATIONS = [
    _annotation(458752000, 458752, ["net"] * 10, "other", "what is this"),
    _annotation(458752001, 458752, ["yes"] * 9 + ["no"], "yes/no", "is this"),
    _annotation(262146000, 262146, ["2"] * 3 + ["3"] * 7, "number", "how many"),
]
QUESTIONS = [
    {"image_id": a["image_id"], "question": "?", "question_id": a["question_id"]} for a in ANNOTATIONS
]
PREDICTIONS = [
    # vqaEval.py a013f00 line 98: ten identical answers normalise nothing: "The net." != "net": 0.0
    {"question_id": 458752000, "answer": "The net."},
    {"question_id": 458752001, "answer": "no"},  # 1 of 10: 0.3
    {"question_id": 262146000, "answer": "two"},  # answers differ: -> "2", 3 of 10: 0.9
]


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "pred": _write(tmp_path / "pred.json", PREDICTIONS),
        "questions": _write(tmp_path / "questions.json", {"questions": QUESTIONS, "data_subtype": "val2014"}),
        "annotations": _write(tmp_path / "annotations.json", {"annotations": ANNOTATIONS}),
    }


def _score(files: dict[str, Path]) -> dict:
    return score_prediction_files(files["pred"], files["questions"], files["annotations"])


def test_score_prediction_files(files: dict[str, Path]) -> None:
    report = _score(files)
    assert report["overall"] == round(100 * (0.0 + 0.3 + 0.9) / 3, 2) == 40.0
    assert report["per_answer_type"] == {"other": 0.0, "yes/no": 30.0, "number": 90.0}
    assert report["n_questions"] == report["n_predictions"] == report["n_annotations"] == 3


def test_questions_file_selects_the_questions_scored(files: dict[str, Path]) -> None:
    _write(files["questions"], {"questions": QUESTIONS[:1]})
    _write(files["pred"], [{"question_id": 458752000, "answer": "net"}])
    report = _score(files)
    assert report["overall"] == 100.0 and report["n_questions"] == 1 and report["n_annotations"] == 3


def test_missing_files(files: dict[str, Path], tmp_path: Path) -> None:
    for name, what in (("pred", "predictions"), ("questions", "questions"), ("annotations", "annotations")):
        broken = {**files, name: tmp_path / "nope.json"}
        with pytest.raises(UsageError, match=f"^{what} file not found: .*nope.json$"):
            _score(broken)
    with pytest.raises(UsageError, match="not a file"):
        _score({**files, "pred": tmp_path})


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("pred", "[{", r"pred.json: not valid JSON \(.* line 1 column 3\)"),
        ("questions", b"\xff\xfe{}", "questions.json: not valid JSON"),
        ("pred", {"question_id": 1}, "pred.json: expected a JSON list"),
        ("questions", {"qs": []}, 'questions.json: expected a JSON object with a "questions" list'),
        ("annotations", {"annotations": {}}, '"annotations" must be a list'),
        ("pred", [{"answer": "x"}], r'pred.json: predictions\[0\] has no "question_id" field'),
        ("pred", [{"question_id": "458752000", "answer": "x"}], '"question_id" must be an integer'),
        ("pred", [{"question_id": 458752000, "answer": 2}], r'predictions\[0\]: "answer" must be a string'),
        ("pred", ["x"], r"predictions\[0\] must be a JSON object"),
        ("questions", {"questions": [{"question_id": 1, "question": "?"}]}, 'has no "image_id" field'),
        ("annotations", {"annotations": [{**ANNOTATIONS[0], "answer_type": None}]}, '"answer_type" must be'),
        ("annotations", {"annotations": [{**ANNOTATIONS[0], "answers": []}]}, '"answers" is empty'),
        (
            "annotations",
            {"annotations": [{**ANNOTATIONS[0], "answers": [{"answer_id": 1}]}]},
            r'annotations\[0\].answers\[0\] has no "answer" field',
        ),
    ],
)
def test_malformed_files(files: dict[str, Path], name: str, content: object, message: str) -> None:
    if isinstance(content, bytes):
        files[name].write_bytes(content)
    else:
        _write(files[name], content)
    with pytest.raises(DataError, match=message):
        _score(files)


def test_duplicate_question_ids(files: dict[str, Path]) -> None:
    _write(files["pred"], [*PREDICTIONS, PREDICTIONS[1]])
    with pytest.raises(
        DataError, match=r"pred.json: question_id 458752001 appears twice \(predictions\[1\] and"
    ):
        _score(files)
    _write(files["pred"], PREDICTIONS)
    _write(files["annotations"], {"annotations": [*ANNOTATIONS, ANNOTATIONS[0]]})
    with pytest.raises(DataError, match="annotations.json: question_id 458752000 appears twice"):
        _score(files)


def test_predictions_for_unknown_questions(files: dict[str, Path]) -> None:
    _write(
        files["pred"], [*PREDICTIONS, {"question_id": 7, "answer": "x"}, {"question_id": 8, "answer": "y"}]
    )
    with pytest.raises(
        DataError, match=r"pred.json: 2 predictions are for question ids not in .*questions.json"
    ):
        _score(files)


def test_questions_without_prediction(files: dict[str, Path]) -> None:
    _write(files["pred"], PREDICTIONS[:1])
    with pytest.raises(
        DataError, match=r"pred.json: 2 of 3 questions in .*questions.json have no prediction"
    ):
        _score(files)


def test_questions_without_annotation_or_with_another_image(files: dict[str, Path]) -> None:
    _write(files["annotations"], {"annotations": ANNOTATIONS[:2]})
    with pytest.raises(DataError, match=r"annotations.json: no annotation for 1 of 3 questions .*262146000"):
        _score(files)
    _write(files["annotations"], {"annotations": [*ANNOTATIONS[:2], {**ANNOTATIONS[2], "image_id": 1}]})
    with pytest.raises(DataError, match="1 annotations name another image"):
        _score(files)


def test_write_submission_round_trip(tmp_path: Path) -> None:
    path = write_submission(tmp_path / "out" / "submission.json", {5: "yes", 2: "two dogs"})
    assert json.loads(path.read_text()) == [
        {"question_id": 2, "answer": "two dogs"},
        {"question_id": 5, "answer": "yes"},
    ]
    assert read_predictions(path) == {2: "two dogs", 5: "yes"}
    assert [p.name for p in path.parent.iterdir()] == ["submission.json"]  # no temporary left


def test_write_submission_rejects_bad_entries_and_keeps_old_file(tmp_path: Path) -> None:
    path = write_submission(tmp_path / "submission.json", {1: "a"})
    with pytest.raises(UsageError, match="int question_id -> str answer"):
        write_submission(path, {"1": "b"})  # type: ignore[dict-item]
    assert read_predictions(path) == {1: "a"}
    assert len(list(tmp_path.iterdir())) == 1


# Every branch of vqaEval.py at a013f00, through the command line; values worked by hand and
# checked against the script itself (Python 2.7).
BRANCHES = [
    # (answers, prediction, answer type, accuracy)
    (["yes"] * 10, "Yes", "yes/no", 0.0),  # all identical: nothing normalised (line 98)
    (["yes"] * 9 + ["yes\n"], " yes\t", "yes/no", 1.0),  # whitespace cleaned first (lines 88-94)
    (["yes"] * 9 + ["no"], "Yes.", "yes/no", 1.0),  # differ: lowercase, period stripped
    (["none"] * 2 + ["0"] * 2 + ["1"] * 6, "zero", "number", 1.0),  # manualMap: 4 x "0"
    (["100"] * 7 + ["one hundred"] * 3, "one hundred", "number", 0.9),  # -> "1 hundred"
    (["2"] * 10, "two", "number", 0.0),  # identical: "two" stays "two"
    (["the dog"] * 2 + ["dog"] + ["cat"] * 7, "A dog!", "other", 0.9),  # articles, "!": 3 x "dog"
    (["don't"] * 2 + ["no"] * 8, "dont", "other", 0.6),  # contraction
    (["1,000"] * 9 + ["1000"], "1,000", "number", 1.0),  # digit comma: all marks deleted
]


def test_cli_scores_every_branch_like_the_official_script(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from scl_cli.cli import app

    annotations, predictions = [], []
    for i, (answers, pred, answer_type, _) in enumerate(BRANCHES):
        annotations.append(_annotation(1000 + i, 7, answers, answer_type, "what"))
        predictions.append({"question_id": 1000 + i, "answer": pred})
    questions = [{"image_id": 7, "question": "?", "question_id": a["question_id"]} for a in annotations]
    files = {
        "pred": _write(tmp_path / "pred.json", predictions),
        "questions": _write(tmp_path / "questions.json", {"questions": questions}),
        "annotations": _write(tmp_path / "annotations.json", {"annotations": annotations}),
    }
    out = tmp_path / "report.json"
    args = ["eval", "vqa", "--predictions", str(files["pred"]), "--questions", str(files["questions"]),
            "--annotations", str(files["annotations"]), "--out", str(out), "--plain"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # 6.4 / 9 = 71.11 %; yes/no (0 + 1 + 1) / 3; number (1 + 0.9 + 0 + 1) / 4; other (0.9 + 0.6) / 2.
    assert report["overall"] == 71.11
    assert report["per_answer_type"] == {"yes/no": 66.67, "number": 72.5, "other": 75.0}
    assert "71.11" in result.output
    for i, (answers, pred, _, expected) in enumerate(BRANCHES):
        from scl_cli.metrics import vqa_accuracy

        assert vqa_accuracy(pred, answers) == pytest.approx(expected), (i, pred, answers)
