"""Visual Genome region descriptions (`region_descriptions.json` + `VG_100K/`, `VG_100K_2/`).

`--source ROOT` where ROOT holds `region_descriptions.json` (or `annotations/...`) and the image
folders `VG_100K/` and `VG_100K_2/` (directly or under `images/`). Split: train only. One sample
per image with its region phrases as captions: `{"id", "image_id", "captions"}`. Regions are
grouped by `regions[].image_id` (not the top-level id), phrases are whitespace-collapsed and
exact repeats dropped (counted in the manifest's `duplicate_phrases`). The JSON is parsed one
image at a time, so the 700 MB file needs little memory. VG holds about 51k COCO images, some
of them in the Karpathy test split; like ViLT and SCL, nothing is filtered.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from scl_cli.data.sources.base import (
    ImageRef,
    Record,
    Skip,
    SourceData,
    SourceRequest,
    check_splits,
    clean_text,
    find,
    find_dir,
    iter_json_array,
    need_sources,
)
from scl_cli.errors import UsageError

EXPECTED = (
    "ROOT with region_descriptions.json (or annotations/region_descriptions.json) and VG_100K/, VG_100K_2/"
)
IMAGE_DIRS = ("VG_100K", "VG_100K_2")


def _index(dirs: list[Path]) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for folder in dirs:
        with os.scandir(folder) as entries:
            for entry in entries:
                index.setdefault(entry.name, Path(entry.path))
    return index


def read(request: SourceRequest) -> SourceData:
    check_splits(request, "vg", ("train",))
    roots = need_sources(request, "vg", EXPECTED)
    path = find(roots, ["region_descriptions.json"], ("", "annotations", "data", "vg"))
    if path is None:
        raise UsageError(f"prepare vg: no region_descriptions.json under {', '.join(map(str, roots))}; "
                         f"expected {EXPECTED}")  # fmt: skip
    dirs = find_dir(roots, IMAGE_DIRS)
    size = max(1, path.stat().st_size)
    stage = f"read {path.name}"
    phrases: dict[int | str, list[str]] = {}
    skips: list[Skip] = []
    duplicates = 0
    request.report(stage, 0, size)
    for n, image in enumerate(iter_json_array(path, on_read=lambda done: request.report(stage, done, size))):
        where = f"{path}:[{n}]"
        if not isinstance(image, dict) or not isinstance(image.get("regions", []), list):
            skips.append(Skip(f"[{n}]", "malformed_entry", where))
            continue
        top_id = image.get("id", image.get("image_id"))
        if not image.get("regions"):
            skips.append(Skip(str(top_id), "no_regions", where, "train"))
            continue
        for region in image["regions"]:
            region = region if isinstance(region, dict) else {}
            image_id = region.get("image_id", top_id)
            if image_id is None:
                skips.append(Skip(f"[{n}]", "region_without_image_id", where, "train", "region"))
                continue
            text, reason = clean_text(region.get("phrase"))
            known = phrases.setdefault(image_id, [])
            if text is None:
                skips.append(Skip(f"{image_id}#{region.get('region_id')}", f"phrase_{reason.removeprefix('text_')}",
                                  where, "train", "region"))  # fmt: skip
            elif text in known:
                duplicates += 1
            else:
                known.append(text)
    request.report(stage, size, size)
    index = _index(dirs)

    def records() -> Iterator[Record | Skip]:
        yield from skips
        for image_id, texts in phrases.items():
            ident = str(image_id)
            name = f"{ident}.jpg"
            if not texts:
                yield Skip(ident, "no_captions", str(path), "train")
            elif name not in index:
                yield Skip(ident, "missing_image", name, "train")
            else:
                meta = {"id": ident, "image_id": image_id, "captions": texts}
                yield Record(ident, "train", {"jpg": ImageRef("file", str(index[name]))}, meta, str(path))

    wanted = request.wants("train")
    totals = {"train": sum(1 for i, t in phrases.items() if t and f"{i}.jpg" in index)} if wanted else {}
    return SourceData("captions", records() if wanted else [], totals,
                      info={"annotations": str(path), "duplicate_phrases": duplicates})  # fmt: skip
