"""Official VQA accuracy: GT-Vision-Lab/VQA vqaEval.py at its head revision a013f00.

Every expected value below is worked by hand from that file; "line N" is the line of
`PythonEvaluationTools/vqaEvaluation/vqaEval.py` at a013f00 that decides the case. The same cases
(and 15,000 random ones) were checked against the script itself under Python 2.7.
"""

from __future__ import annotations

import pytest

from scl_cli.errors import DataError
from scl_cli.metrics import normalize_vqa_answer, vqa_accuracy, vqa_scores
from scl_cli.metrics.vqa import (
    _sum_left_to_right,
    compared_answers,
    process_digit_article,
    process_punctuation,
    round_python2,
)

OTHER = ["zzz"] * 5  # filler answers that never match: the question's answers are not all identical


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("two", "2"),  # manualMap (lines 43-55)
        ("none", "0"),
        ("Ten", "10"),
        ("one hundred", "1 hundred"),  # word by word: only "one" is in manualMap
        ("eleven", "eleven"),
        ("A dog", "dog"),  # articles dropped (lines 56-59, 147)
        ("the an a cat", "cat"),
        ("yes.", "yes"),  # periodStrip (line 62): a period not followed by a digit is removed
        ("Yes", "yes"),  # lower() (line 144)
        ("YeS!", "yes"),  # "!" not next to a space -> space (line 136), then split/join
        ("dont", "don't"),  # contractions (lines 21-42, 151-153)
        ("whats up", "what's up"),
        ("somebody'd", "somebodyd"),  # sic: the table maps this one backwards (line 30)
        ("Im", "im"),  # "Im" is a key, but the text is lowercased first: never used
        ("3.5", "3.5"),  # period before a digit kept
        ("1,000", "1000"),  # comma between digits (commaStrip, line 133): every mark deleted
        ("1, 000", "1 000"),  # ", " touches a space: deleted; no digit,digit so others -> space
        ("t-shirt", "t shirt"),  # "-" not next to a space: becomes a space
        ("t - shirt", "t shirt"),  # next to a space: deleted (split/join drops the double space)
        ("black/white", "black white"),
        ("(apple)?", "apple"),
        ("  The Net.\n", "net"),  # newline/tab -> space, strip (lines 92-94)
        ("Two\tdogs!", "2 dogs"),
        ("mr. smith", "mr smith"),
        ("1.5.", "1.5"),
        ("", ""),
    ],
)
def test_normalize_vqa_answer(raw: str, normalised: str) -> None:
    assert normalize_vqa_answer(raw) == normalised


def test_process_punctuation_alone_keeps_case_and_spaces() -> None:
    assert process_punctuation("Two dogs!") == "Two dogs "
    assert process_punctuation("a-b") == "a b"
    assert process_punctuation("a - b") == "a  b"
    # Each mark is decided on its own (line 133): ", " touches a space, "-" does not.
    assert process_punctuation("a-b, c") == "a b c"


def test_period_strip_removes_at_most_32() -> None:
    # line 137-139: re.UNICODE (== 32) is passed as re.sub's `count`.
    assert process_punctuation("x" + "." * 40) == "x" + "." * 8
    assert process_punctuation("x" + "." * 32) == "x"


def test_python2_semantics() -> None:
    # The script is Python 2: its str pattern's \d is [0-9] only, so "\u0663" (Arabic-Indic 3)
    # does not protect the period before it ...
    assert process_punctuation("1.\u0663") == "1\u0663"
    # ... and unicode.lower() maps one character to one.
    assert process_digit_article("\u0130stanbul") == "istanbul"
    assert process_digit_article("OD\u03a3") == "od\u03c3"
    # ViLT's Python 3 copy (the answer vocabulary) differs there.
    assert process_punctuation("1.\u0663", python3=True) == "1.\u0663"
    assert process_digit_article("\u0130", python3=True) == "i\u0307"
    from scl_cli.data.vqa_answers import normalize_answer

    assert normalize_answer("1.\u0663") == "1.\u0663" and normalize_answer("The 1,000 Dogs.") == "1000 dogs"


def test_all_identical_answers_normalise_nothing() -> None:
    # line 98: only `len(set(gtAnswers)) > 1` normalises, and then both sides (lines 99-103).
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("0", ["none"] * 10) == 0.0
    assert vqa_accuracy("dog", ["the dog"] * 10) == 0.0
    assert vqa_accuracy("dont", ["don't"] * 10) == 0.0
    assert vqa_accuracy("1000", ["1,000"] * 10) == 0.0
    assert vqa_accuracy("1,000", ["1,000"] * 10) == 1.0  # exact string match
    assert vqa_accuracy("The Dog", ["The Dog"] * 10) == 1.0
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("no", ["yes"] * 10) == 0.0


def test_whitespace_is_cleaned_before_the_identity_test() -> None:
    # lines 88-94 run on every answer and the prediction before line 96 builds the set.
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["yes \t"]) == 0.0  # still identical: nothing normalised
    assert compared_answers("\tYes ", ["yes\n"] * 10) == ("Yes", ["yes"] * 10)


def test_mixed_answers_normalise_both_sides() -> None:
    # "none" vs "0": manualMap on both sides (line 146).
    assert vqa_accuracy("none", ["0"] * 4 + OTHER + ["1"]) == 1.0
    assert vqa_accuracy("0", ["none"] * 2 + ["zero"] * 2 + OTHER + ["1"]) == 1.0
    # "one hundred" -> "1 hundred": matches "one hundred" (3 of 10), not "100".
    assert vqa_accuracy("one hundred", ["100"] * 7 + ["one hundred"] * 3) == pytest.approx(0.9)
    assert vqa_accuracy("100", ["100"] * 7 + ["one hundred"] * 3) == 1.0
    # "the dog" among mixed answers: articles dropped from the answers and the prediction.
    assert vqa_accuracy("The dog", ["dog"] * 2 + ["the dog"] * 2 + ["a dog"] + OTHER) == 1.0
    assert vqa_accuracy("a dog", ["the dog"] + ["cat"] * 9) == pytest.approx(0.3)
    # Case and punctuation.
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_accuracy("yes", ["yes!"] * 5 + ["no"] * 5) == 1.0  # "yes!" -> "yes " -> "yes"
    assert vqa_accuracy("t shirt", ["t-shirt"] * 2 + ["shirt"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("1,000", ["1,000"] * 9 + ["1000"]) == 1.0
    assert vqa_accuracy("x" + "." * 40, ["x"] * 5 + OTHER) == 0.0  # 8 periods stay
    assert vqa_accuracy("x" + "." * 32, ["x"] * 5 + OTHER) == 1.0
    # Contractions and number words.
    assert vqa_accuracy("dont", ["don't"] * 5 + ["no"] * 5) == 1.0
    assert vqa_accuracy("Im", ["I'm"] * 5 + OTHER) == 0.0  # "i'm" vs "im"
    assert vqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("Ten", ["10"] * 9 + ["ten"]) == 1.0
    # Python 2's lower(): "\u0130" -> "i".
    assert vqa_accuracy("istanbul", ["\u0130stanbul"] * 5 + OTHER) == 1.0


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # lines 105-112: n of 10 answers match. Leaving out a matching answer leaves n-1
        # matches, leaving out another leaves n; each subset scores min(1, matches/3); average:
        (0, 0.0),
        (1, 0.3),  # (1*0 + 9*(1/3)) / 10
        (2, 0.6),  # (2*(1/3) + 8*(2/3)) / 10
        (3, 0.9),  # (3*(2/3) + 7*1) / 10
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
        2: _ann(["yes"] * 10, "yes/no", "is this"),
        3: _ann(["2"] * 2 + ["3"] * 8, "number", "how many"),
        4: _ann(["red"] * 3 + ["blue"] * 7, "other", "what color"),
    }
    questions = {q: {"question_id": q} for q in annotations}
    predictions = {1: "Yes", 2: "yes", 3: "two", 4: "Red."}
    report = vqa_scores(predictions, questions, annotations)
    # Per question: 0.0 (identical answers, "Yes" != "yes"), 1.0, 0.6, 0.9 -> 2.5 / 4 = 62.5 %.
    assert report["overall"] == 62.5
    assert report["per_answer_type"] == {"yes/no": 50.0, "number": 60.0, "other": 90.0}
    assert report["per_question_type"] == {"is this": 50.0, "how many": 60.0, "what color": 90.0}
    assert report["raw"]["overall"] == pytest.approx(62.5)
    assert report["n_questions"] == 4


def test_vqa_scores_rounds_to_two_decimals() -> None:
    annotations = {q: _ann(["red"] * 10, "other") for q in range(3)}
    questions = {q: {} for q in annotations}
    report = vqa_scores({0: "red", 1: "x", 2: "x"}, questions, annotations)
    assert report["overall"] == 33.33 and report["raw"]["overall"] == pytest.approx(100 / 3)


def test_vqa_scores_rounds_halves_away_from_zero_like_python2() -> None:
    # line 158: round(100*float(sum(accQA))/len(accQA), 2) under Python 2: 100 * 1/800 is
    # exactly 0.125 and Python 2 rounds it to 0.13 (Python 3's round gives 0.12).
    annotations = {q: _ann(["2"] * 10, "number") for q in range(800)}
    predictions = {q: "2" if q == 0 else "3" for q in annotations}
    report = vqa_scores(predictions, dict.fromkeys(annotations, {}), annotations)
    assert report["raw"]["overall"] == 0.125
    assert report["overall"] == 0.13 and report["per_answer_type"] == {"number": 0.13}
    assert round_python2(0.125) == 0.13 and round_python2(0.375) == 0.38 and round_python2(2.675) == 2.67


def test_sums_add_left_to_right_like_python2() -> None:
    # Python 3.12's sum() compensates (1.0 here); the script's Python 2 sum does not.
    assert _sum_left_to_right([0.1] * 10) == 0.9999999999999999


def test_identical_answer_dicts_are_left_out_together() -> None:
    # line 106: the script drops every answer dict equal to the one left out; without
    # answer_id, ten identical {"answer": "yes"} dicts leave 0 others in every subset.
    ann = {"answers": [{"answer": "yes"}] * 10, "answer_type": "yes/no", "question_type": "is"}
    assert vqa_scores({1: "yes"}, {1: {}}, {1: ann})["overall"] == 0.0
    # Equality is after normalisation: "Yes" and "yes" become equal dicts when answers differ.
    answers = [{"answer": "Yes"}, {"answer": "yes"}] + [{"answer": "no", "answer_id": i} for i in range(8)]
    ann = {"answers": answers, "answer_type": "yes/no", "question_type": "is"}
    # Leaving out either yes-dict drops both: 0 matches in those 2 subsets, 2 in the other 8.
    assert vqa_scores({1: "yes"}, {1: {}}, {1: ann})["raw"]["overall"] == pytest.approx(
        100 * 8 * (2 / 3) / 10
    )


def test_vqa_scores_requires_matching_ids() -> None:
    annotations = {1: _ann(["yes"] * 10, "yes/no")}
    with pytest.raises(DataError, match="no prediction"):
        vqa_scores({}, {1: {}}, annotations)
    with pytest.raises(DataError, match="unknown question"):
        vqa_scores({1: "yes", 2: "no"}, {1: {}}, annotations)
    with pytest.raises(DataError, match="no annotation"):
        vqa_scores({1: "yes", 3: "no"}, {1: {}, 3: {}}, annotations)
