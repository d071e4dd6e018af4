"""Conceptual Captions 3M: `Train_GCC-training.tsv` and `Validation_GCC-1.1.0-Validation.tsv`,
one `caption<TAB>url` per line, no header (a `caption<TAB>url` header, as img2dataset's recipe
adds, is skipped).

`--source` takes the TSV files or the folder holding them (a file whose name contains "val" is
the val split, any other the train split); images are downloaded. Or `--source ROOT` with ViLT's
`train_annot.json` / `val_annot.json` + `images_train/...`, or `--webdataset DIR` (an
img2dataset download; its samples go to the one --split given, train by default). Splits: train,
val. One sample per line: `{"id" ("train_0000123": split and line number), "url", "captions":
[one]}`. A URL repeated within a split is reported (`duplicate_url`) and kept once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

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
from scl_cli.data.sources.url_list import UrlRecords, read_vilt_annotations
from scl_cli.errors import UsageError

SPLITS = ("train", "val")
TSV_NAMES = {"train": "Train_GCC-training.tsv", "val": "Validation_GCC-1.1.0-Validation.tsv"}
EXPECTED = f"{TSV_NAMES['train']} / {TSV_NAMES['val']} (or a folder holding them), or --webdataset DIR"
_HEADER = b"caption\turl"


def _split_of(path: Path) -> str:
    return "val" if "val" in path.name.lower() else "train"


def _tsv(path: Path, split: str, make: UrlRecords) -> Iterator[Record | Skip]:
    with open(path, "rb") as f:
        for n, line in enumerate(f):
            line = line.rstrip(b"\r\n")
            where = f"{path.name}:{n + 1}"
            if n == 0 and line.lower() == _HEADER:
                continue
            ident = f"{split}_{n:07d}"
            columns = line.split(b"\t")
            if len(columns) < 2:
                yield Skip(ident, "malformed_line", where, split)
                continue
            yield make.make(ident, split, columns[1], columns[0], where)


def read(request: SourceRequest) -> SourceData:
    check_splits(request, "cc3m", SPLITS)
    if request.webdataset:
        return webdataset_source.read(request, "cc3m")
    roots = need_sources(request, "cc3m", EXPECTED)
    tsvs: dict[str, list[Path]] = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(root.glob("*.tsv"))
        for path in files:
            tsvs.setdefault(_split_of(path), []).append(path)
    if tsvs:
        wanted = {s: paths for s, paths in tsvs.items() if request.wants(s)}
        missing = [s for s in request.splits or () if s not in tsvs]
        if missing:
            raise UsageError(f"prepare cc3m: --split {missing[0]} asked for but no such TSV among --source; "
                             f"expected {EXPECTED}")  # fmt: skip

        def records() -> Iterator[Record | Skip]:
            for split, paths in wanted.items():
                make = UrlRecords()  # duplicate URLs are looked for within a split
                for path in paths:
                    yield from _tsv(path, split, make)

        totals = {s: sum(count_lines(p) for p in paths) for s, paths in wanted.items()}
        return SourceData("captions", records(), totals,
                          info={"annotations": [str(p) for ps in wanted.values() for p in ps]})  # fmt: skip
    records_list: list[Record | Skip] = []
    for split in SPLITS:
        annot = find(roots, [f"{split}_annot.json"])
        if annot is not None and request.wants(split):
            records_list += read_vilt_annotations(annot, split)
    if records_list:
        totals = Counter(r.split for r in records_list if isinstance(r, Record))
        return SourceData("captions", records_list, dict(totals))
    raise UsageError(f"prepare cc3m: no .tsv files (nor ViLT train_annot.json) under "
                     f"{', '.join(map(str, roots))}; expected {EXPECTED}")  # fmt: skip
