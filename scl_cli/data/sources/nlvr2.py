"""NLVR2: JSON-lines statements about image pairs (`train.json`, `dev.json`, `test1.json`, `test2.json`).

`--source ROOT` holding the statement files (at `nlvr2/data/`, `data/` or ROOT itself) and the
images: `images/train/<directory>/<pair>-img0.png` for train, `dev/<pair>-img0.png` and
`test1/...` (also accepted under `images/`). Image names come from the identifier without its
sentence id (`dev-850-0-1` -> `dev-850-0-img0.png`, `dev-850-0-img1.png`); files named .png that
hold JPEG bytes are fine (decoded by content), and a .jpg with the same stem is found too.

Splits: train, dev, test1 (public test, "test-P"), test2 (unreleased until 2022, "test-U"); the
balanced/unbalanced files are subsets of dev/test1 and are not prepared separately. One sample
per statement: `KEY.img0.jpg` (left), `KEY.img1.jpg` (right), `KEY.json` = `{"id" (identifier),
"statement", "label" (bool), "pair_id", "images": [left file, right file]}`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scl_cli.data.sources.base import (
    ImageRef,
    Record,
    Skip,
    SourceData,
    SourceRequest,
    check_splits,
    clean_text,
    find,
    need_sources,
)
from scl_cli.errors import UsageError

SPLITS = ("train", "dev", "test1", "test2")
EXPECTED = "ROOT with nlvr2/data/{train,dev,test1}.json, images/train/<directory>/, dev/, test1/"
_LABELS = {"true": True, "false": False}


class _ImageIndex:
    """Image files of a split by stem (`dev-850-0-img0`), found once by walking its folders."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self.by_split: dict[str, dict[str, Path]] = {}

    def get(self, split: str, stem: str) -> Path | None:
        if split not in self.by_split:
            index: dict[str, Path] = {}
            for root in self.roots:
                for folder in (root / "images" / split, root / split, root / "nlvr2" / "images" / split):
                    for dirpath, _, files in os.walk(folder):
                        for name in files:
                            index.setdefault(name.partition(".")[0], Path(dirpath) / name)
            self.by_split[split] = index
        return self.by_split[split].get(stem)


def _lines(path: Path, split: str, images: _ImageIndex) -> Iterator[Record | Skip]:
    seen: set[str] = set()
    with open(path, "rb") as f:
        for n, raw in enumerate(f):
            where = f"{path.name}:{n + 1}"
            if not raw.strip():
                continue
            try:
                row: Any = json.loads(raw.decode("utf-8", errors="surrogateescape"))
            except ValueError:
                yield Skip(f"{path.name}:{n + 1}", "malformed_line", where, split)
                continue
            ident = row.get("identifier") if isinstance(row, dict) else None
            if not isinstance(ident, str) or ident.count("-") < 3:
                yield Skip(f"{path.name}:{n + 1}", "malformed_line", where, split)
                continue
            if ident in seen:
                yield Skip(ident, "duplicate_id", where, split)
                continue
            seen.add(ident)
            text, reason = clean_text(row.get("sentence"))
            if text is None:
                yield Skip(ident, f"statement_{reason.removeprefix('text_')}", where, split)
                continue
            label = _LABELS.get(str(row.get("label")).lower())
            if label is None:
                yield Skip(ident, "bad_label", where, split)
                continue
            pair = ident.rsplit("-", 1)[0]
            files = [images.get(split, f"{pair}-img{side}") for side in (0, 1)]
            missing = [f"{pair}-img{side}.png" for side, p in enumerate(files) if p is None]
            if missing:
                yield Skip(ident, "missing_image", missing[0], split)
                continue
            meta = {"id": ident, "statement": text, "label": label, "pair_id": pair,
                    "images": [p.name for p in files if p is not None]}  # fmt: skip
            refs = {
                f"img{side}.jpg": ImageRef("file", str(p)) for side, p in enumerate(files) if p is not None
            }
            yield Record(ident, split, refs, meta, where)


def read(request: SourceRequest) -> SourceData:
    check_splits(request, "nlvr2", SPLITS)
    roots = need_sources(request, "nlvr2", EXPECTED)
    files = {s: find(roots, [f"{s}.json"], ("", "nlvr2/data", "data")) for s in SPLITS}
    missing = [s for s in request.splits or () if files[s] is None]
    if missing:
        raise UsageError(f"prepare nlvr2: --split {missing[0]} needs {missing[0]}.json, not found under "
                         f"{', '.join(map(str, roots))} (or their nlvr2/data/)")  # fmt: skip
    splits = [s for s in SPLITS if files[s] is not None and request.wants(s)]
    if not splits:
        raise UsageError(
            f"prepare nlvr2: no train/dev/test1.json under {', '.join(map(str, roots))}; expected {EXPECTED}"
        )
    index = _ImageIndex(roots)
    records: list[Record | Skip] = []
    for n, split in enumerate(splits):
        request.report("read statements", n, len(splits))
        path = files[split]
        assert path is not None
        records += _lines(path, split, index)
    request.report("read statements", len(splits), len(splits))
    totals = Counter(r.split for r in records if isinstance(r, Record))
    return SourceData("nlvr2", records, {s: totals.get(s, 0) for s in splits},
                      info={"split_names": {"test1": "public test (test-P)", "test2": "test-U"}})  # fmt: skip
