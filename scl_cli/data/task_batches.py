"""Batches for fine-tuning and evaluation: VQA, NLVR2 and image-text retrieval.

Each `*Batcher` turns raw shard samples (`{"__key__", "jpg", "json", ...}`) into the tensors the
task's objective reads. Training streams call them with a per-sample `random.Random` (augment,
caption choice); evaluation calls them without (centre crop, every question / caption kept).
Images stay uint8 [B, 1, 3, H, W]: the step normalises them on its device.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scl_cli.data.collate import BadSample, check_readable, decode_image_member, sample_pixels
from scl_cli.data.manifests import dataset_location, load_sources
from scl_cli.data.shards import iter_tar_samples
from scl_cli.data.tokenizer import TextTokenizer
from scl_cli.data.transforms import ImageTransform
from scl_cli.data.vqa_answers import answer_labels, build_vocabulary, normalize_answer
from scl_cli.errors import DataError
from scl_cli.io import remote

Item = tuple[dict[str, Any], int, random.Random | None]
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def sample_json(sample: dict[str, Any]) -> dict[str, Any]:
    check_readable(sample)
    try:
        return json.loads(sample["json"])
    except (KeyError, ValueError) as err:
        raise BadSample("bad_record", f"sample {sample.get('__key__')}: unreadable .json ({err})") from err


def image_bytes(sample: dict[str, Any], prefix: str = "") -> bytes:
    for ext in IMAGE_KEYS:
        if prefix + ext in sample:
            return sample[prefix + ext]
    raise BadSample("bad_record", f"sample {sample.get('__key__')}: no {prefix}jpg/png image")


def _pixels(sample: dict[str, Any], transform: ImageTransform, rng, prefix: str = "") -> torch.Tensor:
    return decode_image_member(sample, image_bytes(sample, prefix), transform, rng)


def iter_split(
    data_root: Path | str, dataset: str, split: str, group: str = "splits"
) -> Iterator[dict[str, Any]]:
    """Every raw sample of a split once, in manifest order (evaluation)."""
    for source in load_sources(data_root, [dataset], split, group=group):
        for shard in source.shards:
            yield from iter_tar_samples(shard.path, sha256=shard.sha256)


def count_split(data_root: Path | str, dataset: str, split: str, group: str = "splits") -> int:
    return sum(s.samples for s in load_sources(data_root, [dataset], split, group=group))


# ----------------------------------------------------------------------------- VQA
def vqa_answer_vocabulary(data_root: Path | str, dataset: str) -> list[str]:
    """The data set's `answers.json` (VQAv2, as prepared), else the answers of its train split by
    frequency (the synthetic shapes data)."""
    folder = dataset_location(data_root, dataset)
    path = remote.join(folder, "answers.json")
    if remote.is_url(path):
        if remote.size(str(path)) is not None:
            return json.loads(remote.read_bytes(str(path)).decode("utf-8"))
    elif Path(path).is_file():
        return json.loads(Path(path).read_text(encoding="utf-8"))
    answers = [
        q["answer"] for s in iter_split(data_root, dataset, "train") for q in sample_json(s).get("vqa", [])
    ]
    if not answers:
        raise DataError(f"{folder}: no answers.json and no VQA questions in its train split")
    return build_vocabulary(answers, size=len(set(answers)))


def human_answers(question: dict[str, Any]) -> list[str]:
    """The ten annotator answers (VQAv2), or a generated answer (shapes) as ten agreeing annotators:
    it is certain, so it trains with soft score 1 and is scored like a unanimous VQAv2 question (one
    copy would train towards VQAv2's 0.3 for an answer one annotator of ten gave)."""
    answers = question.get("answers")
    if answers:
        return [a["answer"] if isinstance(a, dict) else str(a) for a in answers]
    return [question["answer"]] * 10 if "answer" in question else []


def majority_answer(data_root: Path | str, dataset: str) -> str:
    """Most frequent training answer: the baseline a VQA model must beat."""
    counts = Counter(
        normalize_answer(a)
        for s in iter_split(data_root, dataset, "train")
        for q in sample_json(s).get("vqa", [])
        for a in human_answers(q)[:1] or []
    )
    return counts.most_common(1)[0][0] if counts else ""


@dataclass
class VQABatcher:
    tokenizer: TextTokenizer
    transform: ImageTransform
    max_len: int
    vocabulary: list[str]
    max_questions: int = 8  # per image per training batch: bounds the fused batch size

    def __post_init__(self) -> None:
        self.index = {a: i for i, a in enumerate(self.vocabulary)}

    def prepare(self, item: Item) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor, int]]]:
        """One image's pixels and its (question, soft target, question id) triples."""
        sample, _, rng = item
        record = sample_json(sample)
        chosen = list(record.get("vqa", []))
        if rng is not None and len(chosen) > self.max_questions:
            chosen = rng.sample(chosen, self.max_questions)
        pixels = _pixels(sample, self.transform, rng)
        asked = []
        for q in chosen:
            target = torch.zeros(len(self.vocabulary))
            labels = q.get("labels") or answer_labels(human_answers(q), self.index)
            for i, score in labels.items():
                target[int(i)] = float(score)
            asked.append((q["question"], target, int(q.get("question_id", -1))))
        return pixels, asked

    def __call__(self, items: list[Item]) -> dict[str, torch.Tensor]:
        return self.combine([self.prepare(item) for item in items])

    def combine(self, prepared: list[tuple[torch.Tensor, list]]) -> dict[str, torch.Tensor]:
        pixels, questions, owner, targets, qids = [], [], [], [], []
        for row, (image, asked) in enumerate(prepared):
            pixels.append(image)
            for question, target, qid in asked:
                questions.append(question)
                owner.append(row)
                targets.append(target)
                qids.append(qid)
        if not questions:
            raise DataError(f"batch of {len(prepared)} images holds no VQA question")
        ids, mask = self.tokenizer.encode(questions, self.max_len)
        return {
            "images": torch.stack(pixels).unsqueeze(1),
            "text_ids": ids,
            "text_mask": mask,
            "question_image": torch.tensor(owner, dtype=torch.long),
            "vqa_targets": torch.stack(targets),
            "question_id": torch.tensor(qids, dtype=torch.long),
        }


# ----------------------------------------------------------------------------- NLVR2
@dataclass
class NLVR2Batcher:
    tokenizer: TextTokenizer
    transform: ImageTransform
    max_len: int

    def prepare(self, item: Item) -> tuple[torch.Tensor, torch.Tensor, str, bool]:
        sample, _, rng = item
        record = sample_json(sample)
        first = _pixels(sample, self.transform, rng, "img0.")
        second = _pixels(sample, self.transform, rng, "img1.")
        try:
            statement, label = record["statement"], record["label"]
        except KeyError as err:
            raise BadSample("bad_record", f"sample {sample.get('__key__')}: no {err} in its .json") from err
        return first, second, statement, label if isinstance(label, bool) else str(label).lower() == "true"

    def __call__(self, items: list[Item]) -> dict[str, torch.Tensor]:
        return self.combine([self.prepare(item) for item in items])

    def combine(
        self, prepared: list[tuple[torch.Tensor, torch.Tensor, str, bool]]
    ) -> dict[str, torch.Tensor]:
        first, second, statements, labels = (list(column) for column in zip(*prepared, strict=True))
        ids, mask = self.tokenizer.encode(statements, self.max_len)
        return {
            "images": torch.stack(first).unsqueeze(1),
            "images2": torch.stack(second).unsqueeze(1),
            "text_ids": ids,
            "text_mask": mask,
            "labels": torch.tensor(labels, dtype=torch.long),
        }


# ----------------------------------------------------------------------------- retrieval
@dataclass
class CaptionBatcher:
    """Training: one random caption per image or clip (like pre-training). Evaluation: use
    `images_only` to embed every image once; clips give `num_frames` frames each."""

    tokenizer: TextTokenizer
    transform: ImageTransform
    max_len: int
    num_frames: int = 4

    def prepare(self, item: Item) -> tuple[str, torch.Tensor]:
        sample, _, rng = item
        options = sample_json(sample).get("captions")
        if not options:
            raise BadSample("bad_record", f"sample {sample.get('__key__')}: no captions in its .json")
        caption = (rng or random.Random(0)).choice(options)
        return caption, sample_pixels(sample, self.transform, rng, self.num_frames)

    def __call__(self, items: list[Item]) -> dict[str, torch.Tensor]:
        return self.combine([self.prepare(item) for item in items])

    def combine(self, prepared: list[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        captions, pixels = (list(column) for column in zip(*prepared, strict=True))
        ids, mask = self.tokenizer.encode(captions, self.max_len)
        return {"images": torch.stack(pixels), "text_ids": ids, "text_mask": mask}

    def images_only(self, samples: list[dict[str, Any]]) -> torch.Tensor:
        """uint8 [B, T, 3, S, S]: T = 1 for images, num_frames for clips (middle frame of each segment)."""
        return torch.stack([sample_pixels(s, self.transform, None, self.num_frames) for s in samples])
