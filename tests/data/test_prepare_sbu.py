"""`scl prepare sbu` from the two aligned line files (images from a local server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scl_cli.engines.prepare import prepare
from scl_cli.errors import DataError

from .http_fixture import ImageServer
from .realdata import by_id, check_manifest, skipped


def test_sbu_aligned_files(tmp_path: Path) -> None:
    folder = tmp_path / "SBUCaptionedPhotoDataset" / "dataset"
    folder.mkdir(parents=True)
    with ImageServer() as server:
        urls = [f"{server.url}/img/11.jpg",
                f"{server.url}/missing.jpg", f"{server.url}/img/12.jpg", f"{server.url}/img/11.jpg",
                f"{server.url}/fake.jpg", f"{server.url}/img/13.jpg"]  # fmt: skip
        captions = [b"Man sits in a rusted car buried in the sand on Waitarere beach", b"Dead link",
                    b"Colorful kites over the hill", b"Same photo twice", b"Not a photo", b"Caf\xe9 terrace"]  # fmt: skip
        (folder / "SBU_captioned_photo_dataset_urls.txt").write_text("\n".join(urls) + "\n")
        (folder / "SBU_captioned_photo_dataset_captions.txt").write_bytes(b"\n".join(captions) + b"\n")
        summary = prepare("sbu", tmp_path / "data", source=[folder.parent], workers=1, image_size=32,
                          timeout=0.5, retries=0, threads=3)  # fmt: skip
    dataset = tmp_path / "data" / "sbu"
    check_manifest(dataset)
    assert summary.splits == {"train": 2}
    train = by_id(dataset, "train")
    assert train["11"]["meta"]["captions"] == [
        "Man sits in a rusted car buried in the sand on Waitarere beach"
    ]
    assert train["12"]["meta"]["url"].endswith("/img/12.jpg")
    assert skipped(dataset) == {"missing": "http_404", "11-2": "duplicate_url", "fake": "not_an_image",
                                "13": "caption_not_utf8"}  # fmt: skip


def test_sbu_files_must_be_aligned(tmp_path: Path) -> None:
    (tmp_path / "SBU_captioned_photo_dataset_urls.txt").write_text("http://a/1.jpg\nhttp://a/2.jpg\n")
    (tmp_path / "SBU_captioned_photo_dataset_captions.txt").write_text("one caption\n")
    with pytest.raises(DataError, match="has 2 lines but .* has 1"):
        prepare("sbu", tmp_path / "data", source=[tmp_path], workers=1)
