"""`scl prepare cc3m` from the official TSVs (images downloaded from a local server) and from an
img2dataset WebDataset download."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scl_cli.engines.prepare import prepare
from scl_cli.errors import UsageError

from .http_fixture import ImageServer
from .realdata import by_id, check_manifest, make_img2dataset, skipped

FAST = {"workers": 1, "image_size": 32, "timeout": 0.5, "retries": 0, "threads": 4}


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as running:
        yield running


def write_tsvs(folder: Path, url: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    train = [
        b"caption\turl",  # the header img2dataset's recipe adds
        b"a very typical bus station\t" + f"{url}/img/1.jpg".encode(),
        b"actor arrives at the premiere\t" + f"{url}/missing.jpg".encode(),
        b"a photo that is a web page\t" + f"{url}/page.jpg".encode(),
        b"the same bus station again\t" + f"{url}/img/1.jpg".encode(),  # repeated URL
        b"caf\xe9 in the old town\t" + f"{url}/img/2.jpg".encode(),  # not UTF-8
        b"a line without a url",
        b"   \t" + f"{url}/img/3.jpg".encode(),  # empty caption
        b"half a picture\t" + f"{url}/truncated.jpg".encode(),
        b"a huge picture\t" + f"{url}/huge.jpg".encode(),
        b"a slow server\t" + f"{url}/slow.jpg".encode(),
        b"a redirect to a photo\t" + f"{url}/redirect/4.jpg".encode(),
        b"a busy server, then a photo\t" + f"{url}/flaky.jpg".encode(),
    ]
    (folder / "Train_GCC-training.tsv").write_bytes(b"\n".join(train) + b"\n")
    val = [b"a dog on the beach\t" + f"{url}/img/7.jpg".encode(), b"a cat\t" + f"{url}/img/8.jpg".encode()]
    (folder / "Validation_GCC-1.1.0-Validation.tsv").write_bytes(b"\n".join(val))


def test_cc3m_from_url_lists(tmp_path: Path, server: ImageServer) -> None:
    write_tsvs(tmp_path / "cc3m", server.url)
    summary = prepare("cc3m", tmp_path / "data", source=[tmp_path / "cc3m"], shard_size=4, **FAST)
    dataset = tmp_path / "data" / "cc3m"
    check_manifest(dataset)
    assert summary.splits == {"train": 2, "val": 2}
    train = by_id(dataset, "train")
    assert {k: s["meta"]["captions"] for k, s in train.items()} == {
        "train_0000001": ["a very typical bus station"],
        "train_0000011": ["a redirect to a photo"],
    }
    assert train["train_0000001"]["meta"]["url"] == f"{server.url}/img/1.jpg"
    assert skipped(dataset) == {
        "train_0000002": "http_404", "train_0000003": "bad_content_type", "train_0000004": "duplicate_url",
        "train_0000005": "caption_not_utf8", "train_0000006": "malformed_line", "train_0000007": "caption_empty",
        "train_0000008": "truncated", "train_0000009": "too_large", "train_0000010": "timeout",
        "train_0000012": "http_503",  # retries 0: the busy server is not asked again
    }  # fmt: skip
    assert sorted(by_id(dataset, "val")) == ["val_0000000", "val_0000001"]
    assert summary.read == 14 and summary.written == 4


def test_cc3m_limit_reads_only_the_start(tmp_path: Path, server: ImageServer) -> None:
    write_tsvs(tmp_path / "cc3m", server.url)
    before = server.counts["/img/2.jpg"]
    summary = prepare("cc3m", tmp_path / "data", source=[tmp_path / "cc3m" / "Train_GCC-training.tsv"],
                      limit=2, **FAST)  # fmt: skip
    assert summary.splits == {"train": 1} and summary.read == 2
    assert server.counts["/img/2.jpg"] == before


def test_cc3m_from_img2dataset_webdataset(tmp_path: Path) -> None:
    make_img2dataset(tmp_path / "cc3m-wds", shard=0)
    make_img2dataset(tmp_path / "cc3m-wds", shard=1, letterbox=True)
    summary = prepare("cc3m", tmp_path / "data", webdataset=[tmp_path / "cc3m-wds"], workers=2, image_size=32)
    dataset = tmp_path / "data" / "cc3m"
    manifest = check_manifest(dataset)
    assert summary.splits == {"train": 6}
    train = by_id(dataset, "train")
    assert train["000000000"]["meta"] == {"id": "000000000", "url": "http://example.org/000000000.jpg",
                                          "captions": ["a very typical bus station"]}  # fmt: skip
    assert skipped(dataset) == {"000000002": "download_failed", "000000003": "truncated_image",
                                "000000004": "caption_not_utf8", "000010002": "download_failed",
                                "000010003": "truncated_image", "000010004": "caption_not_utf8"}  # fmt: skip
    assert any("letterboxed" in w for w in manifest["warnings"])
    with pytest.raises(UsageError, match="at most one --split"):
        prepare("cc3m", tmp_path / "x", webdataset=[tmp_path / "cc3m-wds"], split=["train", "val"])
    with pytest.raises(UsageError, match="only for|is for the URL data sets"):
        prepare("coco", tmp_path / "x", webdataset=[tmp_path / "cc3m-wds"])
