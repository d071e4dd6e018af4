"""`scl prepare nlvr2`: one sample per statement with both images of its pair."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from scl_cli.engines.prepare import prepare

from .realdata import by_id, check_manifest, make_nlvr2, skipped


def test_nlvr2_pairs_labels_and_skips(tmp_path: Path) -> None:
    make_nlvr2(tmp_path / "nlvr")
    summary = prepare("nlvr2", tmp_path / "data", source=[tmp_path / "nlvr"], workers=1, image_size=32)
    dataset = tmp_path / "data" / "nlvr2"
    manifest = check_manifest(dataset)
    assert manifest["task"] == "nlvr2"
    assert summary.splits == {"train": 4, "dev": 1, "test1": 1}
    train = by_id(dataset, "train")
    first, second = train["train-10108-0-0"], train["train-10108-0-1"]
    assert set(first) == {"__key__", "img0.jpg", "img1.jpg", "json", "meta"}
    assert first["meta"] == {"id": "train-10108-0-0", "statement": "One image shows exactly two bottles.",
                             "label": True, "pair_id": "train-10108-0",
                             "images": ["train-10108-0-img0.png", "train-10108-0-img1.png"]}  # fmt: skip
    assert second["meta"]["label"] is False and second["img0.jpg"] == first["img0.jpg"]
    assert first["img0.jpg"] != first["img1.jpg"]
    assert Image.open(io.BytesIO(first["img1.jpg"])).format == "JPEG"  # .png names holding JPEG bytes
    reasons = {s["id"]: s["reason"] for s in manifest["skipped"]}
    assert reasons["train-2-0-0"] == "duplicate_id" and reasons["train-2-0-1"] == "bad_label"
    assert reasons["train.json:7"] == "malformed_line"
    assert skipped(dataset)["dev-851-0-0"] == "missing_image"
    assert skipped(dataset)["dev-850-0-1"] == "statement_not_utf8"
    (dev,) = by_id(dataset, "dev").values()
    assert dev["meta"]["pair_id"] == "dev-850-0" and dev["meta"]["label"] is True
