"""`scl prepare vqav2`: answer vocabulary, soft scores, per-image questions, test splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scl_cli.data.vqa_answers import answer_labels, build_vocabulary, normalize_answer, soft_score
from scl_cli.engines.prepare import prepare

from .realdata import by_id, check_manifest, make_vqav2, skipped


@pytest.fixture(scope="module")
def vqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("vqa-download")
    make_vqav2(source)
    out = tmp_path_factory.mktemp("data")
    prepare("vqav2", out, source=[source], workers=1, image_size=32)
    return out / "vqav2"


def test_answer_vocabulary_file(vqa: Path) -> None:
    manifest = check_manifest(vqa)
    assert manifest["task"] == "vqa" and manifest["answers"] == "answers.json"
    # multiple_choice_answer over train then val, most frequent first, ties in first-seen order
    assert json.loads((vqa / "answers.json").read_text()) == ["yes", "2", "red", "kitchen", "blue", "no"]
    assert manifest["answer_count"] == 6


def test_questions_grouped_per_image_with_soft_scores(vqa: Path) -> None:
    train = by_id(vqa, "train")
    assert set(train) == {"COCO_train2014_000000000001", "COCO_train2014_000000000002"}
    (q1000,) = train["COCO_train2014_000000000001"]["meta"]["vqa"]
    assert q1000["question_id"] == 1000 and q1000["question"] == "How many dogs?"
    assert len(q1000["answers"]) == 10 and q1000["answers"][-1] == "Two!" and q1000["answer_type"] == "number"
    assert q1000["labels"] == {
        "1": 1.0
    }  # "2", "two", "Two!" are one answer given 9 times; "3" is not in the vocabulary
    (q2000,) = train["COCO_train2014_000000000002"]["meta"]["vqa"]
    assert q2000["labels"] == {"0": 1.0, "5": 0.3}
    assert train["COCO_train2014_000000000002"]["meta"]["image_id"] == 2


def test_out_of_vocabulary_questions_kept_for_evaluation_only(vqa: Path) -> None:
    reasons = {s["id"]: s["reason"] for s in json.loads((vqa / "manifest.json").read_text())["skipped"]}
    assert reasons["1001"] == "answers_out_of_vocabulary" and reasons["2001"] == "question_not_utf8"
    (val,) = by_id(vqa, "val").values()
    assert [(q["question_id"], q["labels"]) for q in val["meta"]["vqa"]] == [
        (5000, {"2": 0.6, "4": 1.0}),
        (5001, {}),
    ]
    assert skipped(vqa) == {"COCO_val2014_000000000006": "missing_image"}


def test_test_splits_have_no_answers(vqa: Path) -> None:
    manifest = check_manifest(vqa)
    assert {s: e["samples"] for s, e in manifest["splits"].items()} == {
        "train": 2, "val": 1, "test_dev": 1, "test_std": 2,
    }  # fmt: skip
    (dev,) = by_id(vqa, "test_dev").values()
    assert dev["meta"]["vqa"] == [{"question_id": 8000, "question": "What is this?", "answers": [],
                                   "answer_type": None, "labels": {}}]  # fmt: skip
    assert "test_dev" in manifest["split_names"]


def test_answer_normalisation_and_scores() -> None:
    assert normalize_answer("Two dogs!") == "2 dogs"
    assert normalize_answer("the Net") == "net"
    assert normalize_answer("dont know") == "don't know"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("3.5") == "3.5" and normalize_answer("yes.") == "yes"
    assert [soft_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert build_vocabulary(["y", "x", "x", "z", "y", "x", "the"], size=2) == ["x", "y"]
    assert answer_labels(["Yes"] * 3 + ["no"] * 7, {"yes": 0, "no": 1}) == {"0": 0.9, "1": 1.0}
