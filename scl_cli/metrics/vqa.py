"""VQA accuracy exactly as the official evaluation (GT-Vision-Lab/VQA `vqaEval.py`) computes it.

Per question, with the ten human answers:

1. The prediction is normalised by `normalize_vqa_answer`: newline and tab become spaces, the
   text is stripped, then `process_punctuation` and `process_digit_article` run.
2. The human answers are processed only when they are **not all identical**
   (`len(set(gtAnswers)) > 1`), and then **only** by `process_punctuation`: they are neither
   lowercased nor stripped, and get no number-word, article or contraction mapping. (The
   released annotations are already lowercase with number words as digits, so this rarely
   matters; but e.g. "1,000" given by all ten annotators never matches, because the prediction
   "1,000" becomes "1000".)
3. Accuracy = mean over the leave-one-out subsets (each answer left out once) of
   min(1, #answers in the subset equal to the prediction / 3); with ten answers, n matching
   answers score 0, 0.3, 0.6, 0.9, 1.0 for n = 0, 1, 2, 3, >= 4.

`vqa_scores` aggregates like the script: overall, per answer type and per question type, as
percentages rounded to two decimals (raw floats kept under "raw").

The official regexes' quirks are kept on purpose: the period pattern `(?!<=\\d)(\\.)(?!\\d)`
(a negative *lookahead* typo for a lookbehind, so every period not followed by a digit is
removed: "yes." -> "yes", "3.5" stays), and `re.UNICODE` passed as the `count` argument of
`re.sub` (at most 32 periods removed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from scl_cli.errors import DataError

# The official tables, verbatim (GT-Vision-Lab/VQA master; ASCII apostrophes).
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
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: see the module docstring
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PERIOD_COUNT = int(re.UNICODE)  # the script passes re.UNICODE (32) as re.sub's `count`

ANSWER_TYPES = ("yes/no", "number", "other")


@lru_cache(maxsize=1 << 16)
def process_punctuation(text: str) -> str:
    """vqaEval.py `processPunctuation`: each punctuation mark is deleted when it touches a space
    in the input (or the input has a comma between digits: then all are deleted), otherwise
    replaced by a space; then every period not followed by a digit is deleted."""
    out = text
    digit_comma = COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """vqaEval.py `processDigitArticle`: lowercase, split on whitespace, number words 0-10 to
    digits, drop articles (a, an, the), expand contractions ("dont" -> "don't"), join with spaces."""
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


@lru_cache(maxsize=1 << 16)
def normalize_vqa_answer(answer: str) -> str:
    """The official processing of a *predicted* answer ("Two dogs!" -> "2 dogs", " The Net.\\n" ->
    "net", "3.5" -> "3.5", "1,000" -> "1000")."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def official_gt_answers(answers: Sequence[str]) -> list[str]:
    """The human answers as the script compares them: punctuation-processed only when they are
    not all identical, otherwise unchanged."""
    if len(set(answers)) > 1:
        return [process_punctuation(a) for a in answers]
    return list(answers)


def _leave_one_out(matches: Sequence[bool]) -> float:
    """Mean over each answer left out of min(1, matches among the others / 3)."""
    total = sum(matches)
    return sum(min(1, float(total - m) / 3) for m in matches) / len(matches)


def vqa_accuracy(pred: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy (0..1) of the predicted answer `pred` for one question with the
    human `answers` (normally ten). Each answer is one annotator: the leave-one-out subsets are
    by position."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    res = normalize_vqa_answer(pred)
    return _leave_one_out([gt == res for gt in official_gt_answers(answers)])


def _annotation_accuracy(res: str, answer_dicts: Sequence[Mapping[str, Any]]) -> float:
    """Accuracy against an annotation's `answers` list, with the script's exact leave-one-out:
    it drops every answer dict *equal* to the one left out. With distinct `answer_id`s (the
    released files) that is one per subset; identical dicts are all dropped together."""
    gts = official_gt_answers([d["answer"] for d in answer_dicts])
    ids = [d.get("answer_id") for d in answer_dicts]
    try:
        distinct = None not in ids and len(set(ids)) == len(ids)
    except TypeError:  # unhashable ids
        distinct = False
    if distinct:
        return _leave_one_out([gt == res for gt in gts])
    items = [{**d, "answer": gt} for d, gt in zip(answer_dicts, gts, strict=True)]
    accs = [
        min(1, float(sum(1 for o in items if o != left_out and o["answer"] == res)) / 3) for left_out in items
    ]
    return sum(accs) / len(accs)


def _percent(values: list[float]) -> float:
    return 100 * float(sum(values)) / len(values)


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
        acc = _annotation_accuracy(normalize_vqa_answer(predictions[qid]), ann["answers"])
        overall.append(acc)
        by_answer.setdefault(ann["answer_type"], []).append(acc)
        by_question.setdefault(ann["question_type"], []).append(acc)

    raw = {
        "overall": _percent(overall),
        "per_answer_type": {t: _percent(v) for t, v in by_answer.items()},
        "per_question_type": {t: _percent(v) for t, v in by_question.items()},
    }
    return {
        "overall": round(raw["overall"], 2),
        "per_answer_type": {t: round(v, 2) for t, v in raw["per_answer_type"].items()},
        "per_question_type": {t: round(v, 2) for t, v in raw["per_question_type"].items()},
        "raw": raw,
        "n_questions": len(overall),
    }
