"""SBU Captions: two aligned line files (`SBU_captioned_photo_dataset_urls.txt` and
`SBU_captioned_photo_dataset_captions.txt`, line i of one belongs to line i of the other).

`--source DIR` holding both files (the `dataset/` folder of `SBUCaptionedPhotoDataset.tar.gz`,
or its parent); images are downloaded. Or `--source ROOT` with ViLT's `annot.json` +
`images_train/...` (already downloaded), or `--webdataset DIR` (an img2dataset download).
Split: train only. One sample per photo: `{"id" (URL basename, the Flickr photo id), "url",
"captions": [one]}`. A repeated URL is reported (`duplicate_url`) and kept once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from scl_cli.data.sources import webdataset_source
from scl_cli.data.sources.base import (
    Record,
    Skip,
    SourceData,
    SourceRequest,
    check_splits,
    count_lines,
    find,
    need_sources,
)
from scl_cli.data.sources.url_list import UrlRecords, read_vilt_annotations, url_basename_id
from scl_cli.errors import DataError, UsageError

URLS = "SBU_captioned_photo_dataset_urls.txt"
CAPTIONS = "SBU_captioned_photo_dataset_captions.txt"
EXPECTED = f"DIR with {URLS} and {CAPTIONS} (or ViLT's annot.json), or --webdataset DIR"


def _aligned(urls_path, captions_path) -> Iterator[Record | Skip]:  # noqa: ANN001
    make = UrlRecords()
    ids: Counter[str] = Counter()
    with open(urls_path, "rb") as urls, open(captions_path, "rb") as captions:
        for n, (url, caption) in enumerate(zip(urls, captions, strict=True)):
            ident = url_basename_id(url, f"sbu-{n:07d}")
            ids[ident] += 1
            if ids[ident] > 1:  # same photo name under another URL: keep the ids distinct
                ident = f"{ident}-{ids[ident]}"
            yield make.make(ident, "train", url, caption.rstrip(b"\r\n"), f"{urls_path.name}:{n + 1}")


def read(request: SourceRequest) -> SourceData:
    check_splits(request, "sbu", ("train",))
    if request.webdataset:
        return webdataset_source.read(request, "sbu")
    roots = need_sources(request, "sbu", EXPECTED)
    if not request.wants("train"):
        return SourceData("captions", [], {})
    urls = find(roots, [URLS], ("", "dataset"))
    captions = find(roots, [CAPTIONS], ("", "dataset"))
    if urls is not None and captions is not None:
        n_urls, n_captions = count_lines(urls), count_lines(captions)
        if n_urls != n_captions:
            raise DataError(
                f"{urls} has {n_urls} lines but {captions} has {n_captions}: they must be aligned"
            )
        return SourceData("captions", _aligned(urls, captions), {"train": n_urls},
                          info={"annotations": [str(urls), str(captions)]})  # fmt: skip
    annot = find(roots, ["annot.json"])
    if annot is not None:
        records = list(read_vilt_annotations(annot, "train"))
        total = sum(isinstance(r, Record) for r in records)
        return SourceData("captions", records, {"train": total}, info={"annotations": str(annot)})
    raise UsageError(f"prepare sbu: found neither {URLS} + {CAPTIONS} nor annot.json under "
                     f"{', '.join(map(str, roots))}; expected {EXPECTED}")  # fmt: skip
