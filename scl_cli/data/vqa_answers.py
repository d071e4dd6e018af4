"""VQAv2 answers: the official answer normalisation, the answer vocabulary and soft scores.

`normalize_answer` is the VQA evaluation's processing (punctuation, digits, articles,
contractions) plus a final comma removal, exactly as ViLT's `glossary.normalize_word`, so the
vocabulary matches the one VQA heads are trained with. Soft score of an answer given by n of the
10 annotators: 0 -> 0.0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

VOCAB_SIZE = 3129

# The official processing lives once, with the metric that defines it.
from scl_cli.metrics.vqa import process_digit_article, process_punctuation  # noqa: E402


def normalize_answer(answer: str) -> str:
    """The official VQA answer processing (e.g. "Two dogs!" -> "2 dogs", "the Net" -> "net"), then
    commas removed as ViLT's vocabulary does."""
    # ViLT runs under Python 3 (Unicode digits and lowercase), unlike the Python 2 metric.
    return process_digit_article(process_punctuation(answer, python3=True), python3=True).replace(",", "")


def build_vocabulary(answers: Iterable[str], size: int = VOCAB_SIZE) -> list[str]:
    """The `size` most frequent normalised answers, most frequent first (ties: first seen first)."""
    counts = Counter(normalize_answer(a) for a in answers)
    counts.pop("", None)
    return [answer for answer, _ in counts.most_common(size)]


SCORES = (0.0, 0.3, 0.6, 0.9)


def soft_score(count: int) -> float:
    """Score of an answer given by `count` of the 10 annotators."""
    return SCORES[count] if count < len(SCORES) else 1.0


def answer_labels(answers: Iterable[str], index: dict[str, int]) -> dict[str, float]:
    """`{answer index (as a string, JSON keys): soft score}` for the annotators' answers found in
    the vocabulary `index` (normalised before counting)."""
    counts = Counter(normalize_answer(a) for a in answers)
    labels = {index[a]: soft_score(n) for a, n in counts.items() if a in index}
    return {str(i): labels[i] for i in sorted(labels)}
