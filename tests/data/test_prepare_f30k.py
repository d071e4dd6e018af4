"""`scl prepare f30k` from a Karpathy-layout fixture (no filepath, no cocoid)."""

from __future__ import annotations

from pathlib import Path

from scl_cli.engines.prepare import prepare

from .realdata import by_id, check_manifest, make_f30k, skipped


def test_f30k_splits_captions_and_skips(tmp_path: Path) -> None:
    make_f30k(tmp_path / "f30k-download")
    summary = prepare(
        "f30k", tmp_path / "data", source=[tmp_path / "f30k-download"], workers=1, image_size=32
    )
    dataset = tmp_path / "data" / "f30k"
    manifest = check_manifest(dataset)
    assert manifest["task"] == "captions"
    assert summary.splits == {"train": 2, "val": 1, "test": 2}
    assert skipped(dataset) == {"1000268201": "empty_image"}
    test = by_id(dataset, "test")
    assert {k: len(s["meta"]["captions"]) for k, s in test.items()} == {"1000366164": 5, "1000523639": 5}
    assert test["1000366164"]["meta"]["image_id"] == 1000366164
    assert by_id(dataset, "train")["10002456"]["meta"]["captions"][0] == "A photo of photo 10002456, view 0."


def test_missing_annotation_file_is_one_clear_error(tmp_path: Path) -> None:
    import pytest

    from scl_cli.errors import UsageError

    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no dataset_flickr30k.json under .*expected ROOT with"):
        prepare("f30k", tmp_path / "data", source=[tmp_path / "empty"], workers=1)
    with pytest.raises(UsageError, match="does not exist"):
        prepare("f30k", tmp_path / "data", source=[tmp_path / "nowhere"], workers=1)
    with pytest.raises(UsageError, match="unknown --split dev"):
        prepare("f30k", tmp_path / "data", source=[tmp_path / "empty"], split=["dev"], workers=1)


def test_cli_prints_the_summary_table(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from scl_cli.cli import app

    make_f30k(tmp_path / "src")
    args = ["prepare", "f30k", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "data"),
            "--split", "train", "--image-size", "32", "--workers", "1", "--plain"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for expected in ("f30k -> ", "read", "written", "skipped sample: empty_image", "time (s)", "images/s"):
        assert expected in result.output
    assert "shards" in result.output  # the progress stage, as plain lines


def test_non_utf8_file_name_keeps_its_image(tmp_path: Path) -> None:
    import json
    import os

    from .realdata import jpeg

    src = tmp_path / "src"
    (src / "flickr30k-images").mkdir(parents=True)
    with open(os.path.join(os.fsencode(src / "flickr30k-images"), b"caf\xe9.jpg"), "wb") as f:
        f.write(jpeg(1))
    entry = {"sentids": [0], "imgid": 0, "split": "test", "filename": "@@NAME@@",
             "sentences": [{"tokens": ["a"], "raw": "A cafe.", "imgid": 0, "sentid": 0}]}  # fmt: skip
    text = (
        json.dumps({"images": [entry], "dataset": "flickr30k"}).encode().replace(b"@@NAME@@", b"caf\xe9.jpg")
    )
    (src / "dataset_flickr30k.json").write_bytes(text)
    summary = prepare("f30k", tmp_path / "data", source=[src], workers=1, image_size=32)
    assert summary.splits == {"test": 1}
    (sample,) = by_id(tmp_path / "data" / "f30k", "test").values()
    assert sample["meta"]["filename"] == "caf?.jpg" and sample["meta"]["captions"] == ["A cafe."]
