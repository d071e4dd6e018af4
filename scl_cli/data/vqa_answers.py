"""VQAv2 answers: the official answer normalisation, the answer vocabulary and soft scores.

`normalize_answer` is the VQA evaluation's processing (punctuation, digits, articles,
contractions) plus a final comma removal, exactly as ViLT's `glossary.normalize_word`, so the
vocabulary matches the one VQA heads are trained with. Soft score of an answer given by n of the
10 annotators: 0 -> 0.0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

VOCAB_SIZE = 3129

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
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
           "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!")  # fmt: skip
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_answer(answer: str) -> str:
    """The official VQA answer processing (e.g. "Two dogs!" -> "2 dogs", "the Net" -> "net")."""
    text = answer
    digit_comma = _COMMA_STRIP.search(answer) is not None
    for p in PUNCTUATION:
        if p + " " in answer or " " + p in answer or digit_comma:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    # The reference passes re.UNICODE (32) as `count`: only the first 32 periods are stripped.
    text = _PERIOD_STRIP.sub("", text, count=32)
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words).replace(",", "")


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
