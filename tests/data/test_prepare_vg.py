"""`scl prepare vg` from a region_descriptions.json fixture: regions grouped by their image_id."""

from __future__ import annotations

import json
from pathlib import Path

from scl_cli.data.sources.base import iter_json_array
from scl_cli.engines.prepare import prepare

from .realdata import by_id, check_manifest, make_vg, skipped


def test_vg_regions_become_captions(tmp_path: Path) -> None:
    make_vg(tmp_path / "vg")
    summary = prepare("vg", tmp_path / "data", source=[tmp_path / "vg"], workers=1, image_size=32)
    dataset = tmp_path / "data" / "vg"
    manifest = check_manifest(dataset)
    assert summary.splits == {"train": 3} and manifest["duplicate_phrases"] == 1
    train = by_id(dataset, "train")
    assert train["1"]["meta"]["captions"] == ["the clock is green in colour", "a white cloud"]
    assert train["2"]["meta"]["captions"] == ["man wearing hat"]  # repeat, blank and non-UTF-8 dropped
    assert train["3"]["meta"] == {"id": "3", "image_id": 3, "captions": ["tree by the road"]}
    assert skipped(dataset) == {"4": "no_regions", "5": "missing_image"}
    assert summary.skipped["phrase_empty"] == 1 and summary.skipped["phrase_not_utf8"] == 1


def test_streamed_json_array_matches_json_load(tmp_path: Path) -> None:
    items = [{"id": i, "regions": [{"phrase": "x" * (i * 37 % 300), "n": 1.5e3}]} for i in range(200)]
    path = tmp_path / "big.json"
    path.write_text(" \n[ " + ",\n ".join(json.dumps(i) for i in items) + " ]\n")
    assert list(iter_json_array(path, chunk=64)) == items
    path.write_text("[1, 22, 333]")
    assert list(iter_json_array(path, chunk=2)) == [1, 22, 333]
