"""VQAv2: questions + annotations JSON and the COCO images they ask about.

`--source` paths (one ROOT, or several) holding the question files
`v2_OpenEnded_mscoco_{train2014,val2014,test-dev2015,test2015}_questions.json`, the annotation
files `v2_mscoco_{train2014,val2014}_annotations.json`, and the image folders `train2014/`,
`val2014/`, `test2015/` (file names `COCO_<folder>_<12-digit image id>.jpg`).

Splits: train (train2014), val (val2014), test_dev (test-dev2015 questions on test2015 images),
test_std (test2015 questions). Every split whose question file is present is prepared unless
--split says otherwise. The answer vocabulary is the `VOCAB_SIZE` most frequent normalised
`multiple_choice_answer`s over train + val annotations (always both, whatever --split), written
to `answers.json`. One sample per image: `{"id", "image_id", "vqa": [{"question_id", "question",
"answers" (the 10 raw answers), "answer_type", "labels": {answer index: soft score}}]}`.
Train questions with no answer in the vocabulary are left out (reported); val keeps them (with
empty labels) so evaluation sees every question; test questions have no answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scl_cli.data.sources.base import (
    ImageRef,
    Record,
    Skip,
    SourceData,
    SourceRequest,
    check_splits,
    clean_text,
    find,
    find_dir,
    need_sources,
    read_json,
)
from scl_cli.data.vqa_answers import VOCAB_SIZE, answer_labels, build_vocabulary
from scl_cli.errors import DataError, UsageError

SPLITS = ("train", "val", "test_dev", "test_std")
QUESTIONS = {
    "train": "v2_OpenEnded_mscoco_train2014_questions.json",
    "val": "v2_OpenEnded_mscoco_val2014_questions.json",
    "test_dev": "v2_OpenEnded_mscoco_test-dev2015_questions.json",
    "test_std": "v2_OpenEnded_mscoco_test2015_questions.json",
}
ANNOTATIONS = {"train": "v2_mscoco_train2014_annotations.json", "val": "v2_mscoco_val2014_annotations.json"}
IMAGE_FOLDER = {"train": "train2014", "val": "val2014", "test_dev": "test2015", "test_std": "test2015"}
SPLIT_NAMES = {
    "train": "train2014 questions and images",
    "val": "val2014 questions and images",
    "test_dev": "test-dev2015 questions (test2015 images)",
    "test_std": "test2015 questions (test-std)",
}
EXPECTED = "the v2_OpenEnded_mscoco_*_questions.json and v2_mscoco_*_annotations.json files, train2014/, val2014/, test2015/"
_SUBDIRS = ("", "annotations", "questions", "vqa", "vqav2", "Annotations", "Questions")


def _list(data: Any, key: str, path: Path) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: expected a JSON object with a '{key}' list")
    return data[key]


def _vocabulary(annotations: dict[str, list]) -> list[str]:
    answers = (a.get("multiple_choice_answer", "") for split in ("train", "val") for a in annotations.get(split, [])
               if isinstance(a, dict) and isinstance(a.get("multiple_choice_answer"), str))  # fmt: skip
    return build_vocabulary(answers, VOCAB_SIZE)


def _image_finder(roots: list[Path]) -> Any:
    dirs: dict[str, list[Path]] = {}

    def find_image(split: str, image_id: int) -> Path | None:
        folder = IMAGE_FOLDER[split]
        if folder not in dirs:
            dirs[folder] = find_dir(roots, [folder])
        name = f"COCO_{folder}_{image_id:012d}.jpg"
        return next((d / name for d in dirs[folder] if (d / name).is_file()), None)

    return find_image


def _split_records(split: str, questions: list, by_qid: dict[int, dict] | None, index: dict[str, int],
                   path: Path, find_image: Any) -> Iterator[Record | Skip]:  # fmt: skip
    """One record per image (in order of first question) with its questions."""
    images: dict[int, list[dict]] = {}
    seen: set[int] = set()
    for n, q in enumerate(questions):
        where = f"{path.name}:questions[{n}]"
        if (
            not isinstance(q, dict)
            or not isinstance(q.get("question_id"), int)
            or not isinstance(q.get("image_id"), int)
        ):
            yield Skip(f"questions[{n}]", "malformed_entry", where, split, "question")
            continue
        qid = q["question_id"]
        if qid in seen:
            yield Skip(str(qid), "duplicate_question_id", where, split, "question")
            continue
        seen.add(qid)
        text, reason = clean_text(q.get("question"))
        if text is None:
            yield Skip(str(qid), f"question_{reason.removeprefix('text_')}", where, split, "question")
            continue
        item: dict[str, Any] = {"question_id": qid, "question": text, "answers": [], "answer_type": None,
                                "labels": {}}  # fmt: skip
        if by_qid is not None:
            annotation = by_qid.get(qid)
            if annotation is None:
                yield Skip(str(qid), "missing_annotation", where, split, "question")
                continue
            item["answers"] = [
                a.get("answer", "") for a in annotation.get("answers") or [] if isinstance(a, dict)
            ]
            item["answer_type"] = annotation.get("answer_type")
            item["labels"] = answer_labels(item["answers"], index)
            if split == "train" and not item["labels"]:
                yield Skip(str(qid), "answers_out_of_vocabulary", where, split, "question")
                continue
        images.setdefault(q["image_id"], []).append(item)
    for image_id, items in images.items():
        ident = f"COCO_{IMAGE_FOLDER[split]}_{image_id:012d}"
        image = find_image(split, image_id)
        if image is None:
            yield Skip(ident, "missing_image", f"{ident}.jpg", split)
            continue
        meta = {"id": ident, "image_id": image_id, "vqa": items}
        yield Record(ident, split, {"jpg": ImageRef("file", str(image))}, meta, str(path))


def read(request: SourceRequest) -> SourceData:
    check_splits(request, "vqav2", SPLITS)
    roots = need_sources(request, "vqav2", EXPECTED)
    question_files = {s: find(roots, [name], _SUBDIRS) for s, name in QUESTIONS.items()}
    annotation_files = {s: find(roots, [name], _SUBDIRS) for s, name in ANNOTATIONS.items()}
    missing = [s for s in request.splits or () if question_files[s] is None]
    if missing:
        raise UsageError(f"prepare vqav2: --split {missing[0]} needs {QUESTIONS[missing[0]]}, not found under "
                         f"{', '.join(map(str, roots))}")  # fmt: skip
    if not any(annotation_files.values()):
        raise UsageError(f"prepare vqav2: the answer vocabulary is built from {ANNOTATIONS['train']} and "
                         f"{ANNOTATIONS['val']}; neither is under {', '.join(map(str, roots))}")  # fmt: skip
    warnings = [f"{ANNOTATIONS[s]} not found: the answer vocabulary comes from the other split only"
                for s, p in annotation_files.items() if p is None]  # fmt: skip
    splits = [s for s in SPLITS if question_files[s] is not None and request.wants(s)]
    annotations: dict[str, list] = {}
    for n, (split, path) in enumerate(p for p in annotation_files.items() if p[1] is not None):
        request.report("read annotations", n, 2)
        annotations[split] = _list(read_json(path), "annotations", path)
    request.report("read annotations", 2, 2)
    vocabulary = _vocabulary(annotations)
    index = {answer: i for i, answer in enumerate(vocabulary)}
    find_image = _image_finder(roots)
    parts: list[list[Record | Skip]] = []
    for n, split in enumerate(splits):
        request.report("read questions", n, len(splits))
        path = question_files[split]
        assert path is not None
        questions = _list(read_json(path), "questions", path)
        by_qid = None
        if split in ANNOTATIONS:
            if split not in annotations:
                raise UsageError(f"prepare vqav2: --split {split} needs {ANNOTATIONS[split]} for its answers")
            by_qid = {
                a["question_id"]: a for a in annotations[split] if isinstance(a, dict) and "question_id" in a
            }
        parts.append(list(_split_records(split, questions, by_qid, index, path, find_image)))
    request.report("read questions", len(splits), len(splits))
    records = [r for part in parts for r in part]
    totals = {s: sum(1 for r in records if isinstance(r, Record) and r.split == s) for s in splits}
    info = {"answers": "answers.json", "answer_count": len(vocabulary), "split_names": SPLIT_NAMES}
    return SourceData(
        "vqa", records, totals, files={"answers.json": vocabulary}, info=info, warnings=warnings
    )
