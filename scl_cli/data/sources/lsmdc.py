"""LSMDC 2016 (MPII movie description), text-video retrieval with the 1,000-clip public test.

`--source ROOT` (or several) holding the official annotation files `LSMDC16_annos_training.csv`,
`LSMDC16_annos_val.csv` and `LSMDC16_challenge_1000_publictect.csv` (sic; directly or under
`annotations/`, `data/`), each tab-separated with no header and 6 columns `CLIP_ID, START_ALIGNED,
END_ALIGNED, START_EXTRACTED, END_EXTRACTED, SENTENCE`, and the clips, one `<CLIP_ID>.avi` (or
`.mp4`) per clip in per-movie folders (`0001_American_Beauty/<CLIP_ID>.avi`) under `avi/`, `mp4/`,
`videos/` (or ROOT itself when it has none of these); clips are keyed by file name without the
extension, wherever they are below those folders, as CLIP4Clip does. `LSMDC16_annos_test.csv`
(the full, non-retrieval test set) is not read.

Splits: train (~101k clips), val (~7.4k), test (the 1k public test, in file order: one caption
per clip). A `CLIP_ID` repeats in train/val, once per sentence: its sentences become the
captions of one sample (exact repeats dropped; SCL trains on the first one only); a repeat in the
test file is reported (`duplicate_id`) and left out. One sample per clip: `KEY.mp4` (the `.avi` or
`.mp4` as it is) and `{"id" (CLIP_ID), "captions", "video" (path below the clip folder, e.g.
"0001_American_Beauty/<CLIP_ID>.avi"), "movie", "start", "end" (the aligned times)}`. Clips decord
cannot read (such as the two SCL excludes by name) are reported by the shard writer.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from scl_cli.data.sources.base import (
    ImageRef,
    Record,
    Skip,
    SourceData,
    SourceRequest,
    check_splits,
    find,
    find_dir,
    need_sources,
)
from scl_cli.data.sources.clips import (
    VIDEO_INFO,
    add_caption,
    clip_record,
    existing_dirs,
    finish,
    index_clips,
)
from scl_cli.errors import UsageError

SPLITS = ("train", "val", "test")
FILES = {
    "train": ("LSMDC16_annos_training.csv",),
    "val": ("LSMDC16_annos_val.csv",),
    "test": ("LSMDC16_challenge_1000_publictect.csv", "LSMDC16_challenge_1000_publictest.csv"),
}
CLIP_DIRS = ("avi", "mp4", "videos", "avi-mp4", "clips")
EXPECTED = (
    f"ROOT with {FILES['train'][0]}, {FILES['val'][0]}, {FILES['test'][0]} and the clips "
    "<movie>/<CLIP_ID>.avi under avi/ (or mp4/, videos/)"
)
_MOVIE = re.compile(r"^(.+)_\d{2}\.\d{2}\.\d{2}\.\d{3}-\d{2}\.\d{2}\.\d{2}\.\d{3}$")


def _read(path: Path, split: str) -> list[Record | Skip]:
    """Records of one annotation file, one per CLIP_ID in order of first appearance (no video yet)."""
    out: list[Record | Skip] = []
    records: dict[str, Record] = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f):
            line = line.rstrip(b"\r\n")
            where = f"{path.name}:{n + 1}"
            if not line.strip():
                continue
            columns = line.split(b"\t", 5)
            clip = columns[0].decode("utf-8", errors="surrogateescape").strip()
            if len(columns) < 6 or not clip:
                out.append(Skip(clip or where, "malformed_line", where, split))
                continue
            record = records.get(clip)
            if record is not None and split == "test":
                out.append(Skip(clip, "duplicate_id", where, split, "caption"))
                continue
            if record is None:
                match = _MOVIE.match(clip)
                meta = {"id": clip, "captions": [], "video": "", "movie": match.group(1) if match else "",
                        "start": columns[1].decode("ascii", "replace").strip(),
                        "end": columns[2].decode("ascii", "replace").strip()}  # fmt: skip
                record = records[clip] = Record(clip, split, {}, meta, where)
                out.append(record)
            sentence = len(record.meta["captions"])
            skip = add_caption(record.meta["captions"], columns[5], f"{clip}#{sentence}", split, where)
            if skip is not None:
                out.append(skip)
    return out


def read(request: SourceRequest) -> SourceData:
    check_splits(request, "lsmdc", SPLITS)
    roots = need_sources(request, "lsmdc", EXPECTED)
    files = {split: find(roots, names, ("", "annotations", "annotation", "data", "LSMDC")) for split, names in
             FILES.items()}  # fmt: skip
    present = [s for s in SPLITS if files[s] is not None]
    missing = [s for s in request.splits or () if files[s] is None]
    if missing or not present:
        split = missing[0] if missing else "train"
        raise UsageError(f"prepare lsmdc: no {FILES[split][0]} ({split} split) under {', '.join(map(str, roots))}; "
                         f"expected {EXPECTED}")  # fmt: skip
    wanted = [s for s in present if request.wants(s)]
    read_items: list[Record | Skip] = []
    for split in wanted:
        path = files[split]
        if path is None:
            continue
        request.report(f"read {path.name}", 0, 1)
        read_items += _read(path, split)
        request.report(f"read {path.name}", 1, 1)
    dirs = find_dir(roots, list(CLIP_DIRS)) or [r for r in roots if r.is_dir()]
    request.report("find clips", 0, 1)
    clips = index_clips(existing_dirs(dirs), recursive=True)
    request.report("find clips", 1, 1)
    records: list[Record | Skip] = []
    for item in finish(read_items):
        if isinstance(item, Record):
            found = clips.get(item.id)
            if found is None:
                item = Skip(item.id, "missing_video", f"{item.id}.avi (in {item.origin})", item.split)
            else:
                clip_path, relative = found
                extra = {"movie": item.meta["movie"] or clip_path.parent.name, "start": item.meta["start"],
                         "end": item.meta["end"]}  # fmt: skip
                item = clip_record(item.id, item.split, ImageRef("file", str(clip_path)), relative,
                                   item.meta["captions"], item.origin, **extra)  # fmt: skip
        records.append(item)
    totals = Counter(r.split for r in records if isinstance(r, Record))
    annotations = [str(files[s]) for s in wanted]
    warnings = [f"no {FILES[s][0]}: the {s} split was not written" for s in SPLITS
                if files[s] is None and request.splits is None]  # fmt: skip
    return SourceData("captions", records, {s: totals.get(s, 0) for s in wanted},
                      info={**VIDEO_INFO, "annotations": annotations}, warnings=warnings)  # fmt: skip
