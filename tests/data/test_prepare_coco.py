"""`scl prepare coco` from a Karpathy-layout fixture: splits, captions per image, skips, manifest."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scl_cli.engines.prepare import PrepareSummary, prepare

from .realdata import by_id, check_manifest, make_coco, skipped


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PrepareSummary]:
    source = tmp_path_factory.mktemp("coco-download")
    make_coco(source)
    out = tmp_path_factory.mktemp("data")
    stages: set[str] = set()
    summary = prepare("coco", out, source=[source], workers=1, image_size=32, shard_size=2,
                      progress=lambda stage, done, total: stages.add(stage))  # fmt: skip
    assert {"read dataset_coco.json", "shards"} <= stages
    return out / "coco", summary


def test_splits_restval_joins_train(coco: tuple[Path, PrepareSummary]) -> None:
    dataset, summary = coco
    manifest = check_manifest(dataset)
    assert manifest["task"] == "captions" and manifest["name"] == "coco"
    assert summary.splits == {"train": 4, "val": 3, "test": 2}
    train = by_id(dataset, "train")
    assert set(train) == {"COCO_train2014_000000000001", "COCO_train2014_000000000002",
                          "COCO_val2014_000000000010", "COCO_val2014_000000000011"}  # fmt: skip
    assert train["COCO_val2014_000000000010"]["meta"]["karpathy_split"] == "restval"
    assert set(by_id(dataset, "test")) == {"COCO_val2014_000000000014", "COCO_val2014_000000000015"}
    # 5 train inputs with an image file, 2 per shard; the truncated one leaves shard 1 one short.
    shards = manifest["splits"]["train"]["shards"]
    assert [(s["file"], s["samples"]) for s in shards] == [("train/000000.tar", 2), ("train/000001.tar", 1),
                                                           ("train/000002.tar", 1)]  # fmt: skip


def test_all_captions_of_an_image_in_one_sample(coco: tuple[Path, PrepareSummary]) -> None:
    dataset, _ = coco
    test = by_id(dataset, "test")
    assert len(test["COCO_val2014_000000000015"]["meta"]["captions"]) == 7
    assert len(by_id(dataset, "val")["COCO_val2014_000000000013"]["meta"]["captions"]) == 6
    first = by_id(dataset, "train")["COCO_train2014_000000000001"]["meta"]
    # Whitespace collapsed, the repeat, the empty and the non-UTF-8 caption dropped; the second
    # listing of the same file merged in (its "Dirt road." was already there).
    assert first["captions"] == ["A man rides a moped.", "Dirt road.", "A helmet is red."]
    assert first["image_id"] == 1 and first["filename"] == "COCO_train2014_000000000001.jpg"
    assert len(first["sentids"]) == len(first["captions"])


def test_bad_inputs_are_skipped_with_reasons(coco: tuple[Path, PrepareSummary]) -> None:
    dataset, summary = coco
    assert skipped(dataset) == {
        "COCO_train2014_000000000003": "truncated_image",
        "COCO_train2014_000000000004": "missing_image",
        "COCO_val2014_000000000016": "decompression_bomb",
        "COCO_val2014_000000000017": "duplicate_id_other_split",
    }
    assert summary.skipped["caption_not_utf8"] == 1 and summary.skipped["caption_empty"] == 1
    assert summary.skipped["duplicate_caption"] == 2
    assert summary.read == 13 and summary.written == 9
    assert any("merged" in w for w in summary.warnings)


def test_images_are_resized_rgb_jpegs(coco: tuple[Path, PrepareSummary]) -> None:
    dataset, _ = coco
    train = by_id(dataset, "train")
    for key in ("COCO_train2014_000000000002", "COCO_val2014_000000000010", "COCO_val2014_000000000011"):
        image = Image.open(io.BytesIO(train[key]["jpg"]))  # CMYK, palette+transparency, 16-bit grey
        assert image.mode == "RGB" and min(image.size) == 32 and image.size == (43, 32)
    grey16 = np.asarray(Image.open(io.BytesIO(train["COCO_val2014_000000000011"]["jpg"])).convert("L"))
    assert 40 < grey16.mean() < 215  # scaled from 16 bits, not clipped to white


def test_split_selection_and_limit(tmp_path: Path, coco: tuple[Path, PrepareSummary]) -> None:
    source = tmp_path / "src"
    make_coco(source)
    summary = prepare(
        "coco", tmp_path / "out", source=[source], split=["test"], limit=1, workers=1, image_size=0
    )
    assert summary.splits == {"test": 1}
    sample = next(iter(by_id(tmp_path / "out" / "coco", "test").values()))
    assert Image.open(io.BytesIO(sample["jpg"])).size == (64, 48)  # image_size 0 keeps the size
