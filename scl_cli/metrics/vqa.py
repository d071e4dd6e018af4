"""VQA accuracy exactly as the official evaluation computes it: GT-Vision-Lab/VQA
`PythonEvaluationTools/vqaEvaluation/vqaEval.py` at its head revision, commit a013f00
(2021-03-11, "Fixed processing answers bug"). Older revisions normalised the prediction always
and the human answers differently; they give other numbers.

Per question, with the ten human answers (`VQAEval.evaluate`):

1. Every human answer and the prediction: newline and tab become spaces, then `strip()`.
2. Only when the cleaned human answers are **not all identical** (`len(set(gtAnswers)) > 1`)
   are the human answers **and** the prediction passed through `process_punctuation` and then
   `process_digit_article` (lowercase, number words to digits, no articles, contractions). When
   all ten are identical nothing is normalised on either side: ten "yes" score the prediction
   "Yes" 0, and ten "2" score "two" 0.
3. Accuracy = mean over the leave-one-out subsets of min(1, #answers in the subset equal to the
   prediction / 3); with ten answers, n matching answers score 0, 0.3, 0.6, 0.9, 1.0 for
   n = 0, 1, 2, 3, >= 4. The script leaves out every answer dict *equal* to the current one
   (with the released files' distinct `answer_id`s, exactly one).

`vqa_scores` aggregates like the script: overall, per answer type and per question type, in
percent rounded to two decimals (raw floats kept under "raw").

The script is Python 2 (`print "..."`), and its numbers are Python 2's; scl reproduces them:
`round` rounds exact halves away from zero (100 * 1/800 = 0.125 -> 0.13, where Python 3's
`round` gives 0.12); sums add left to right (Python 3.12's `sum` compensates); `\\d` in its
patterns is ASCII [0-9]; `lower()` maps each character to one ("\u0130" -> "i"; no final sigma).
The official regexes' quirks are kept too: the period pattern `(?!<=\\d)(\\.)(?!\\d)` (a
negative *lookahead* typo for a lookbehind, so every period not followed by a digit is removed:
"yes." -> "yes", "3.5" stays), and `re.UNICODE` passed as the `count` argument of `re.sub` (at
most 32 periods removed). Unicode-database differences between Python 2.7 and 3 (which
characters are whitespace or have a lowercase) are not reproduced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import Any

from scl_cli.errors import DataError

# The official tables, verbatim (vqaEval.py at a013f00, lines 21-66; ASCII apostrophes).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!")  # fmt: skip
# Python 2 compiles the script's str patterns without re.UNICODE: \d is [0-9] (re.ASCII here).
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)  # sic: see the module docstring
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)", re.ASCII)
# ViLT's copy (`vilt/utils/glossary.py`, used for the answer vocabulary) runs under Python 3.
_PERIOD_STRIP_PY3 = re.compile(PERIOD_STRIP.pattern)
_COMMA_STRIP_PY3 = re.compile(COMMA_STRIP.pattern)
_PERIOD_COUNT = int(re.UNICODE)  # the script passes re.UNICODE (32) as re.sub's `count`

ANSWER_TYPES = ("yes/no", "number", "other")


@lru_cache(maxsize=1 << 16)
def process_punctuation(text: str, *, python3: bool = False) -> str:
    """vqaEval.py `processPunctuation`: each punctuation mark is deleted when it touches a space
    in the input (or the input has a comma between digits: then all are deleted), otherwise
    replaced by a space; then every period not followed by a digit is deleted (at most 32).
    `python3=True` gives ViLT's Python 3 copy (`\\d` is any Unicode digit there)."""
    period_strip, comma_strip = (
        (_PERIOD_STRIP_PY3, _COMMA_STRIP_PY3) if python3 else (PERIOD_STRIP, COMMA_STRIP)
    )
    out = text
    digit_comma = comma_strip.search(text) is not None
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return period_strip.sub("", out, count=_PERIOD_COUNT)


def _lower_python2(text: str) -> str:
    """Python 2's `unicode.lower()`: each character to its simple lowercase mapping ("\u0130" -> "i",
    where Python 3 gives "i\u0307"; a final "\u03a3" -> "\u03c3", where Python 3 gives "\u03c2")."""
    if text.isascii():
        return text.lower()
    return "".join("i" if c == "\u0130" else c.lower() for c in text)


def process_digit_article(text: str, *, python3: bool = False) -> str:
    """vqaEval.py `processDigitArticle`: lowercase, split on whitespace, number words 0-10 to
    digits ("none" -> "0"), drop articles (a, an, the), expand contractions ("dont" -> "don't"),
    join with single spaces. `python3=True` lowercases like Python 3 (ViLT's copy)."""
    words = [MANUAL_MAP.get(w, w) for w in (text.lower() if python3 else _lower_python2(text)).split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def clean_whitespace(answer: str) -> str:
    """What the script does to every answer and prediction first: newline and tab to spaces, strip."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


@lru_cache(maxsize=1 << 16)
def normalize_vqa_answer(answer: str) -> str:
    """The official answer normalisation, which the script applies to the human answers and the
    prediction of a question whose ten answers are not all identical: whitespace clean-up,
    `process_punctuation`, `process_digit_article` ("Two dogs!" -> "2 dogs", " The Net.\\n" ->
    "net", "3.5" -> "3.5", "1,000" -> "1000")."""
    return process_digit_article(process_punctuation(clean_whitespace(answer)))


def compared_answers(pred: str, answers: Sequence[str]) -> tuple[str, list[str]]:
    """The prediction and the human answers as the script compares them (vqaEval.py lines
    87-103): whitespace-cleaned, and normalised on both sides only when the cleaned human answers
    are not all identical."""
    gts = [clean_whitespace(a) for a in answers]
    res = clean_whitespace(pred)
    if len(set(gts)) > 1:
        return normalize_vqa_answer(res), [normalize_vqa_answer(a) for a in gts]
    return res, gts


def _sum_left_to_right(values: Sequence[float]) -> float:
    """Python 2's `sum`: plain left-to-right addition (Python 3.12's `sum` compensates)."""
    total: float = 0
    for v in values:
        total = total + v
    return total


def _mean_min3(match_counts: Sequence[int]) -> float:
    """vqaEval.py lines 105-112: the mean over subsets of min(1, matching answers / 3)."""
    accs = [min(1, float(n) / 3) for n in match_counts]
    return float(_sum_left_to_right(accs)) / len(accs)


def vqa_accuracy(pred: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy (0..1) of the predicted answer `pred` for one question with the
    human `answers` (normally ten). Each answer is one annotator: the leave-one-out subsets are
    by position."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    res, gts = compared_answers(pred, answers)
    matches = [gt == res for gt in gts]
    total = sum(matches)
    return _mean_min3([total - m for m in matches])


def _annotation_accuracy(pred: str, answer_dicts: Sequence[Mapping[str, Any]]) -> float:
    """Accuracy against an annotation's `answers` list, with the script's exact leave-one-out:
    it drops every answer dict *equal* to the one left out (compared after processing). With
    distinct `answer_id`s (the released files) that is one per subset; identical dicts are all
    dropped together."""
    res, gts = compared_answers(pred, [d["answer"] for d in answer_dicts])
    ids = [d.get("answer_id") for d in answer_dicts]
    try:
        distinct = None not in ids and len(set(ids)) == len(ids)
    except TypeError:  # unhashable ids
        distinct = False
    if distinct:
        total = sum(gt == res for gt in gts)
        return _mean_min3([total - (gt == res) for gt in gts])
    items = [{**d, "answer": gt} for d, gt in zip(answer_dicts, gts, strict=True)]
    return _mean_min3([sum(1 for o in items if o != left_out and o["answer"] == res) for left_out in items])


def round_python2(x: float, ndigits: int = 2) -> float:
    """Python 2's `round`: the float's exact value rounded half away from zero (0.125 -> 0.13;
    Python 3's `round` gives 0.12). 2.675 is 2.67499999... in binary and rounds to 2.67 in both."""
    return float(Decimal(x).quantize(Decimal(1).scaleb(-ndigits), rounding=ROUND_HALF_UP))


def _percent(values: list[float]) -> float:
    return 100 * float(_sum_left_to_right(values)) / len(values)


def vqa_scores(
    predictions: Mapping[int, str],
    questions: Mapping[int, Mapping[str, Any]],
    annotations: Mapping[int, Mapping[str, Any]],
) -> dict[str, Any]:
    """Score predicted answers like the official script.

    predictions: question_id -> predicted answer.
    questions: question_id -> question record; these ids are the questions scored.
    annotations: question_id -> annotation record with `answers` ([{"answer", ...}]),
    `answer_type` and `question_type` (extra annotations are ignored).

    Every question needs an annotation and exactly one prediction, and every prediction must be
    for a question (the script refuses results that do not cover its question ids); otherwise
    `DataError`. Returns

        {"overall": 65.43,                        # percent, rounded to 2 decimals
         "per_answer_type": {"yes/no": ..., "number": ..., "other": ...},   # types present only
         "per_question_type": {"what color": ..., ...},
         "raw": {"overall": 65.4321..., "per_answer_type": {...}, "per_question_type": {...}},
         "n_questions": 1234}
    """
    if not questions:
        raise DataError("no questions to score")
    missing_ann = [q for q in questions if q not in annotations]
    if missing_ann:
        raise DataError(f"{len(missing_ann)} questions have no annotation (e.g. {missing_ann[:3]})")
    missing_pred = [q for q in questions if q not in predictions]
    if missing_pred:
        raise DataError(
            f"{len(missing_pred)} of {len(questions)} questions have no prediction (e.g. {missing_pred[:3]}); "
            "the official evaluation needs one answer per question"
        )
    unknown = [q for q in predictions if q not in questions]
    if unknown:
        raise DataError(f"{len(unknown)} predictions are for unknown question ids (e.g. {unknown[:3]})")

    overall: list[float] = []
    by_answer: dict[str, list[float]] = {}
    by_question: dict[str, list[float]] = {}
    for qid in questions:
        ann = annotations[qid]
        acc = _annotation_accuracy(predictions[qid], ann["answers"])
        overall.append(acc)
        by_answer.setdefault(ann["answer_type"], []).append(acc)
        by_question.setdefault(ann["question_type"], []).append(acc)

    raw = {
        "overall": _percent(overall),
        "per_answer_type": {t: _percent(v) for t, v in by_answer.items()},
        "per_question_type": {t: _percent(v) for t, v in by_question.items()},
    }
    return {
        "overall": round_python2(raw["overall"]),
        "per_answer_type": {t: round_python2(v) for t, v in raw["per_answer_type"].items()},
        "per_question_type": {t: round_python2(v) for t, v in raw["per_question_type"].items()},
        "raw": raw,
        "n_questions": len(overall),
    }
