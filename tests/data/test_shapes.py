"""`scl prepare shapes`: layout, content, consistency of captions/VQA/pairs, determinism."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scl_cli.data.shapes import (
    COLORS,
    GRID,
    NUMBER_WORDS,
    PALETTE_BLOCK,
    PALETTE_COLORS,
    STATEMENTS,
    ShapeObject,
    block_palette,
    generate_image,
    holds,
    objects_from_json,
    statement_kind,
)
from scl_cli.data.shards import iter_tar_samples, read_manifest, sha256_file, verify_shards
from scl_cli.engines.prepare import PrepareSummary, prepare, prepare_shapes
from scl_cli.errors import DataError, UsageError

from .conftest import TINY


def records(dataset: Path, split: str, group: str = "splits") -> list[dict]:
    manifest = read_manifest(dataset)
    out = []
    for shard in manifest[group][split]["shards"]:
        out += [json.loads(s["json"]) for s in iter_tar_samples(dataset / shard["file"])]
    return out


def objects_by_id(dataset: Path, split: str) -> dict[str, list[ShapeObject]]:
    return {r["id"]: objects_from_json(r) for r in records(dataset, split)}


def test_layout_and_counts_match_the_tars(tiny_dataset: Path) -> None:
    manifest = read_manifest(tiny_dataset)
    assert manifest["name"] == "shapes" and manifest["version"] == 1 and manifest["skipped"] == []
    assert (tiny_dataset / manifest["tokenizer"]).is_file()
    assert {s: manifest["splits"][s]["samples"] for s in ("train", "val", "test")} == {
        "train": 32,
        "val": 4,
        "test": 4,
    }
    assert {s: manifest["nlvr2"][s]["samples"] for s in ("train", "val", "test")} == {
        "train": 16,
        "val": 2,
        "test": 2,
    }
    assert [s["file"] for s in manifest["splits"]["train"]["shards"]] == [
        f"train/00000{i}.tar" for i in range(4)
    ]
    for group in ("splits", "nlvr2"):
        for split, entry in manifest[group].items():
            total = 0
            for shard in entry["shards"]:
                samples = list(iter_tar_samples(tiny_dataset / shard["file"]))
                assert len(samples) == shard["samples"]
                total += len(samples)
            assert total == entry["samples"], (group, split)
    sample = next(iter_tar_samples(tiny_dataset / "train/000000.tar"))
    assert sample["__key__"] == "train-000000" and set(sample) == {"__key__", "jpg", "json"}
    assert Image.open(io.BytesIO(sample["jpg"])).size == (TINY["image_size"],) * 2
    pair = next(iter_tar_samples(tiny_dataset / "nlvr2/train/000000.tar"))
    assert set(pair) == {"__key__", "img0.jpg", "img1.jpg", "json"}
    assert set(json.loads(pair["json"])) == {"id", "statement", "label", "type", "images"}


def test_manifest_checksums_match_the_files(tiny_dataset: Path) -> None:
    manifest = read_manifest(tiny_dataset)
    for shard in manifest["splits"]["val"]["shards"] + manifest["nlvr2"]["test"]["shards"]:
        assert sha256_file(tiny_dataset / shard["file"]) == shard["sha256"]
    assert verify_shards(tiny_dataset) == []


def test_captions_name_every_object(tiny_dataset: Path) -> None:
    for record in records(tiny_dataset, "train"):
        captions = record["captions"]
        assert len(captions) >= 5 and len(set(captions)) == len(captions)
        text = " ".join(captions)
        for o in record["objects"]:
            assert f"{o['color']} {o['shape']}" in text and o["size"] in text, (o, captions)
        n = len(record["objects"])
        assert f"{NUMBER_WORDS[n]} shape" in text or n == 1
        if len({(o["row"], o["col"]) for o in record["objects"]}) > 1:
            assert re.search(r"left of|right of|above|below", text), captions


def test_objects_are_drawn_in_their_cells(tiny_dataset: Path) -> None:
    sample = next(iter_tar_samples(tiny_dataset / "train/000001.tar"))
    image = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), dtype=np.int32)
    cell = image.shape[0] // GRID
    objects = {(o["row"], o["col"]): o for o in json.loads(sample["json"])["objects"]}
    for row in range(GRID):
        for col in range(GRID):
            pixels = image[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell].reshape(-1, 3)
            if (row, col) in objects:
                want = np.array(COLORS[objects[row, col]["color"]])
                assert np.abs(pixels - want).sum(axis=1).min() < 60
            else:
                assert (pixels.max(axis=1) - pixels.min(axis=1)).max() < 40  # plain grey background


def test_vqa_types_and_answers(tiny_dataset: Path) -> None:
    train = records(tiny_dataset, "train")
    kinds = Counter(qa["type"] for r in train for qa in r["vqa"])
    assert set(kinds) == {"color", "shape", "count", "exists", "relation"}
    assert Counter(qa["answer"] for r in train for qa in r["vqa"] if qa["type"] == "exists") == {
        "yes": len(train), "no": len(train)
    }  # fmt: skip
    for r in train:
        objects = objects_from_json(r)
        for qa in r["vqa"]:
            q, a = qa["question"], qa["answer"]
            if q == "how many shapes are there?":
                assert a == NUMBER_WORDS[len(objects)]
            if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", q):
                assert a == ("yes" if any((o.color, o.shape) == m.groups() for o in objects) else "no")
            if m := re.fullmatch(r"how many (\w+) shapes are there\?", q):
                assert a == NUMBER_WORDS[sum(o.color == m[1] for o in objects)]
            if m := re.fullmatch(r"what color is the (\w+)\?", q):
                assert [o.color for o in objects if o.shape == m[1]] == [a]


def _side(objects: tuple[list[ShapeObject], list[ShapeObject]], name: str) -> list[ShapeObject]:
    return objects[0] if name == "left" else objects[1]


def test_pair_statements_are_balanced_and_true(tiny_dataset: Path) -> None:
    images = objects_by_id(tiny_dataset, "train")
    pairs = records(tiny_dataset, "train", group="nlvr2")
    labels = Counter(p["label"] for p in pairs)
    assert abs(labels[True] - labels[False]) <= 1
    checked = 0
    for p in pairs:
        pair = (images[p["images"][0]], images[p["images"][1]])
        both = pair[0] + pair[1]
        s = p["statement"]
        if m := re.fullmatch(r"there are exactly (\w+) shapes in total\.", s):
            truth, kind = NUMBER_WORDS.index(m[1]) == len(both), "total"
        elif m := re.fullmatch(r"the (left|right) image has an? (\w+) (\w+)\.", s):
            truth, kind = any((o.color, o.shape) == (m[2], m[3]) for o in _side(pair, m[1])), "side_has"
        elif m := re.fullmatch(r"both images contain an? (\w+) shape\.", s):
            truth, kind = all(any(o.color == m[1] for o in side) for side in pair), "both_have_color"
        elif m := re.fullmatch(r"neither image contains an? (\w+) (\w+)\.", s):
            truth, kind = not any((o.color, o.shape) == (m[1], m[2]) for o in both), "neither_has"
        elif m := re.fullmatch(r"the (left|right) image has more shapes than the (left|right) image\.", s):
            truth, kind = len(_side(pair, m[1])) > len(_side(pair, m[2])), "more_shapes"
        else:
            assert p["type"] in {statement_kind(k) for k in STATEMENTS}, p
            continue
        assert truth == p["label"], (s, pair)
        assert p["type"] == kind, (s, p["type"])  # the evaluation's per-kind accuracy reads it
        checked += 1
    assert checked >= 4


def test_relations_follow_the_grid() -> None:
    a, b = ShapeObject("circle", "red", "small", 0, 0), ShapeObject("star", "blue", "large", 1, 2)
    assert (
        holds(a, "left of", b) and holds(a, "above", b) and holds(b, "right of", a) and holds(b, "below", a)
    )
    assert not holds(a, "right of", b) and not holds(a, "below", b)


def test_runs_of_images_share_a_palette() -> None:
    # Hard negatives by layout: a batch read from one run holds images of the same few colours.
    runs = []
    for block in range(4):
        colors = set()
        for index in range(block * PALETTE_BLOCK, block * PALETTE_BLOCK + 40):
            _, record = generate_image(0, "train", index, 32)
            used = {o["color"] for o in record["objects"]}
            assert used <= set(block_palette(0, "train", index)), (index, used)
            colors |= used
        assert len(colors) == PALETTE_COLORS
        runs.append(frozenset(colors))
    assert len(set(runs)) > 1  # different runs, different palettes
    assert block_palette(0, "train", 5) == block_palette(0, "train", PALETTE_BLOCK - 1)
    assert set(block_palette(0, "train", 0)) <= set(COLORS)


def test_same_seed_same_bytes_any_worker_count(tiny_dataset: Path, tmp_path: Path) -> None:
    again = prepare_shapes(tmp_path / "again", workers=2, **TINY)
    assert (again / "manifest.json").read_bytes() == (tiny_dataset / "manifest.json").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (tiny_dataset / "tokenizer.json").read_bytes()
    for tar in sorted(tiny_dataset.rglob("*.tar")):
        assert sha256_file(again / tar.relative_to(tiny_dataset)) == sha256_file(tar)


def test_other_seed_other_data(tiny_dataset: Path, tmp_path: Path) -> None:
    other = prepare_shapes(tmp_path, workers=1, **{**TINY, "seed": 1})
    mine, theirs = read_manifest(tiny_dataset), read_manifest(other)
    for split in ("train", "val", "test"):
        assert mine["splits"][split]["shards"][0]["sha256"] != theirs["splits"][split]["shards"][0]["sha256"]


def test_prepare_dispatch_summary_and_rerun(tmp_path: Path) -> None:
    stages = set()
    summary = prepare("shapes", tmp_path, images=10, image_size=32, shard_size=4, workers=1,
                      progress=lambda stage, done, total: stages.add(stage))  # fmt: skip
    assert isinstance(summary, PrepareSummary) and summary.path == tmp_path / "shapes"
    assert summary.splits == {"train": 8, "val": 1, "test": 1}
    assert summary.tasks == {"nlvr2": {"train": 4, "val": 1, "test": 1}} and summary.seconds > 0
    assert {"train", "val", "test", "nlvr2/train", "tokenizer"} <= stages
    # A rerun with fewer shards replaces the old folder: no stale shards stay behind.
    prepare("shapes", tmp_path, images=10, image_size=32, shard_size=100, workers=1)
    assert sorted(p.name for p in (tmp_path / "shapes" / "train").iterdir()) == ["000000.tar"]
    assert verify_shards(tmp_path / "shapes") == []


def test_prepare_refuses_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="known: shapes"):
        prepare("coco-typo", tmp_path)
    with pytest.raises(UsageError, match="colour"):
        prepare("shapes", tmp_path, colour="red")
    with pytest.raises(UsageError, match="at least 10"):
        prepare_shapes(tmp_path, images=3)
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a shapes data set"):
        prepare_shapes(tmp_path, images=10, image_size=32)


def test_manifest_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data set folder missing"):
        read_manifest(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty/manifest.json: missing — run `scl prepare empty"):
        read_manifest(tmp_path / "empty")


def test_verify_shards_reports_a_changed_shard(tiny_dataset: Path, tmp_path: Path) -> None:
    copy = prepare_shapes(tmp_path, workers=1, **TINY)
    with open(copy / "val/000000.tar", "r+b") as f:
        f.seek(1000)
        f.write(b"corrupt")
    problems = verify_shards(copy)
    assert len(problems) == 1 and "val/000000.tar: sha256 differs" in problems[0]
