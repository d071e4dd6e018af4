"""Official VQA accuracy: normalisation of the prediction, the ground-truth rule, leave-one-out."""

from __future__ import annotations

import pytest

from scl_cli.errors import DataError
from scl_cli.metrics import normalize_vqa_answer, vqa_accuracy, vqa_scores
from scl_cli.metrics.vqa import official_gt_answers, process_punctuation


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("two", "2"),  # manualMap
        ("none", "0"),
        ("Ten", "10"),
        ("A dog", "dog"),  # articles dropped
        ("the an a cat", "cat"),
        ("yes.", "yes"),  # trailing period stripped
        ("Yes", "yes"),
        ("YeS!", "yes"),  # "!" -> space, then split/join
        ("dont", "don't"),  # contractions
        ("whats up", "what's up"),
        ("3.5", "3.5"),  # period before a digit kept
        ("1,000", "1000"),  # comma between digits: every punctuation mark deleted
        ("1, 2", "1 2"),  # ", " touches a space: deleted
        ("t-shirt", "t shirt"),  # "-" not next to a space: becomes a space
        ("black and-white", "black and white"),
        ("  The Net.\n", "net"),  # newline/tab -> space, strip
        ("Two\tdogs!", "2 dogs"),
        ("mr. smith", "mr smith"),
        ("1.5.", "1.5"),
        ("", ""),
    ],
)
def test_normalize_vqa_answer(raw: str, normalised: str) -> None:
    assert normalize_vqa_answer(raw) == normalised


def test_process_punctuation_keeps_case_and_spaces() -> None:
    # Ground-truth answers only get processPunctuation: no lowercasing, stripping or mapping.
    assert process_punctuation("Two dogs!") == "Two dogs "
    assert process_punctuation("a-b") == "a b"
    assert process_punctuation("a - b") == "a  b"


def test_gt_answers_processed_only_when_not_unanimous() -> None:
    assert official_gt_answers(["1,000"] * 10) == ["1,000"] * 10
    assert official_gt_answers(["1,000", "1000"]) == ["1000", "1000"]


def test_prediction_variants_match() -> None:
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    assert vqa_accuracy("a dog", ["dog"] * 10) == 1.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("YES", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_accuracy("dont", ["don't"] * 10) == 1.0
    assert vqa_accuracy("3.5", ["3.5"] * 10) == 1.0
    assert vqa_accuracy("no", ["yes"] * 10) == 0.0


def test_official_quirks_are_kept() -> None:
    # Human answers never get the digit/article mapping: "2" does not match "two".
    assert vqa_accuracy("2", ["two"] * 10) == 0.0
    # Unanimous answers are not processed at all: "1,000" (prediction -> "1000") misses ...
    assert vqa_accuracy("1,000", ["1,000"] * 10) == 0.0
    # ... but once answers differ they are punctuation-processed and it matches all ten.
    assert vqa_accuracy("1,000", ["1,000"] * 9 + ["1000"]) == 1.0
    # Differing answers lose punctuation: "yes!" -> "yes " (trailing space), no match for "yes".
    assert vqa_accuracy("yes", ["yes!"] * 5 + ["no"] * 5) == 0.0


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # n of 10 answers match. Leaving out a matching answer leaves n-1 matches, leaving out
        # another leaves n; each subset scores min(1, matches/3); average over the 10 subsets:
        (0, 0.0),
        (1, 0.3),  # (1*0 + 9*(1/3)) / 10 = 3/10
        (2, 0.6),  # (2*(1/3) + 8*(2/3)) / 10 = (2/3 + 16/3) / 10 = 6/10
        (3, 0.9),  # (3*(2/3) + 7*1) / 10 = (2 + 7) / 10
        (4, 1.0),  # (4*1 + 6*1) / 10
        (10, 1.0),
    ],
)
def test_leave_one_out_average(matches: int, expected: float) -> None:
    answers = ["dog"] * matches + ["cat"] * (10 - matches)
    assert vqa_accuracy("dog", answers) == pytest.approx(expected)


def test_no_answers_is_an_error() -> None:
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


def _ann(answers: list[str], answer_type: str, question_type: str = "what") -> dict:
    return {
        "answers": [
            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
        ],
        "answer_type": answer_type,
        "question_type": question_type,
    }


def test_vqa_scores_per_type() -> None:
    annotations = {
        1: _ann(["yes"] * 10, "yes/no", "is this"),
        2: _ann(["no"] * 10, "yes/no", "is this"),
        3: _ann(["2"] * 2 + ["3"] * 8, "number", "how many"),
        4: _ann(["red"] * 3 + ["blue"] * 7, "other", "what color"),
    }
    questions = {q: {"question_id": q} for q in annotations}
    predictions = {1: "Yes", 2: "yes", 3: "two", 4: "red"}
    report = vqa_scores(predictions, questions, annotations)
    # Per question: 1.0, 0.0, 0.6, 0.9 -> overall 2.5 / 4 = 62.5 %.
    assert report["overall"] == 62.5
    assert report["per_answer_type"] == {"yes/no": 50.0, "number": 60.0, "other": 90.0}
    assert report["per_question_type"] == {"is this": 50.0, "how many": 60.0, "what color": 90.0}
    assert report["raw"]["overall"] == pytest.approx(62.5)
    assert report["n_questions"] == 4


def test_vqa_scores_rounds_to_two_decimals() -> None:
    annotations = {q: _ann(["red"] * 10, "other") for q in range(3)}
    questions = {q: {} for q in annotations}
    report = vqa_scores({0: "Red.", 1: "x", 2: "x"}, questions, annotations)
    assert report["overall"] == 33.33 and report["raw"]["overall"] == pytest.approx(100 / 3)


def test_identical_answer_dicts_are_left_out_together() -> None:
    # The script drops every answer dict equal to the one left out; without answer_id, ten
    # identical {"answer": "yes"} dicts leave 0 others in every subset.
    ann = {"answers": [{"answer": "yes"}] * 10, "answer_type": "yes/no", "question_type": "is"}
    assert vqa_scores({1: "yes"}, {1: {}}, {1: ann})["overall"] == 0.0


def test_vqa_scores_requires_matching_ids() -> None:
    annotations = {1: _ann(["yes"] * 10, "yes/no")}
    with pytest.raises(DataError, match="no prediction"):
        vqa_scores({}, {1: {}}, annotations)
    with pytest.raises(DataError, match="unknown question"):
        vqa_scores({1: "yes", 2: "no"}, {1: {}}, annotations)
    with pytest.raises(DataError, match="no annotation"):
        vqa_scores({1: "yes", 3: "no"}, {1: {}, 3: {}}, annotations)
