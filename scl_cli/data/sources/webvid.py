"""WebVid (2M / 10M), video pre-training: the m-bain CSVs or SCL's TSVs of downloaded clips.

`--source ROOT` where ROOT holds `results_2M_train.csv` / `results_2M_val.csv` (or the 10M ones;
directly or under `metadata/`; header `videoid,contentUrl,duration,page_dir,name`) and the clips
as `videos/<page_dir>/<videoid>.mp4` (the Frozen-in-Time layout); the CSV files and the video
folder may also be given as separate --source paths. A clip that is not on disk is downloaded
from `contentUrl` when no `videos/` folder was found at all, and reported (`missing_video`)
when there is one. Or SCL's header-less `webvid_{training,validation}_success_full.tsv`
(`caption<TAB>path relative to the video folder`, `.mp4` added when the path has none on disk).
A file whose name contains "val" is the val split, any other the train split; in a folder
holding both kinds, the CSVs are read. Splits: train, val. One sample per clip: `KEY.mp4` (the
file as it is) and `{"id" (videoid), "captions": [name], "video" ("<page_dir>/<videoid>.mp4" or
the URL), "page_dir", "duration" (seconds, from "PT00H00M13S"), "url"}`. A videoid repeated
within a split is reported (`duplicate_id`) and kept once. Captions are kept whole (Frozen-in-Time
cuts them to 350 characters at load time; the tokenizer truncates here).
"""

from __future__ import annotations

import csv
import re
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
    count_lines,
    find_dir,
    need_sources,
)
from scl_cli.data.sources.clips import VIDEO_INFO, clip_record, clip_stem, existing_dirs
from scl_cli.errors import DataError, UsageError

SPLITS = ("train", "val")
CSV_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")
EXPECTED = (
    "ROOT with results_2M_train.csv / results_2M_val.csv and videos/<page_dir>/<videoid>.mp4, "
    "or webvid_{training,validation}_success_full.tsv (caption<TAB>relative path) and the video folder"
)
_DURATION = re.compile(r"^PT?(?:(\d+(?:\.\d*)?)H)?(?:(\d+(?:\.\d*)?)M)?(?:(\d+(?:\.\d*)?)S)?$", re.IGNORECASE)


def _split_of(path: Path) -> str:
    return "val" if "val" in path.name.lower() else "train"


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return [c.strip().lstrip("\ufeff") for c in next(csv.reader(f), [])]


def _is_webvid_csv(path: Path) -> bool:
    return {"videoid", "name"} <= set(_header(path))


def duration_seconds(text: str) -> float | None:
    """13.0 for "PT00H00M13S" (the CSV's ISO 8601 duration) or "13"; None when unreadable."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.match(text)
    if not match or not any(match.groups()):
        return None
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


class _Clips:
    """Finds a split's clips on disk and reports repeated videoids."""

    def __init__(self, video_dirs: list[Path], local: bool) -> None:
        self.video_dirs = video_dirs
        self.local = local  # a videos/ folder was given: a clip not in it is missing, not downloaded
        self.seen: dict[str, str] = {}

    def first_seen(self, ident: str, where: str) -> str | None:
        """Where `ident` was met before in this split (None: first time; now remembered)."""
        before = self.seen.get(ident)
        if before is None:
            self.seen[ident] = where
        return before

    def find(self, relative: str, add_mp4: bool = False) -> Path | None:
        for folder in self.video_dirs:
            candidates = [folder / relative]
            if add_mp4:
                candidates.append(folder / f"{relative}.mp4")
            for path in candidates:
                if path.is_file():
                    return path
        return None


def _csv_records(path: Path, split: str, clips: _Clips) -> Iterator[Record | Skip]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header = [c.strip().lstrip("\ufeff") for c in next(reader, [])]
        missing = [c for c in ("videoid", "name") if c not in header]
        if missing:
            raise DataError(f"{path}: no '{missing[0]}' column; expected the header {','.join(CSV_COLUMNS)}")
        column = {name: header.index(name) for name in CSV_COLUMNS if name in header}
        for row in reader:
            where = f"{path.name}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            values = {name: row[i].strip() if i < len(row) else "" for name, i in column.items()}
            ident = values["videoid"]
            if not ident:
                yield Skip(f"{path.name}:{reader.line_num}", "malformed_line", where, split)
                continue
            before = clips.first_seen(ident, where)
            if before is not None:
                yield Skip(ident, "duplicate_id", f"{where} (same videoid as {before})", split)
                continue
            text, reason = clean_text(row[column["name"]] if column["name"] < len(row) else "")
            if text is None:
                yield Skip(ident, f"caption_{reason.removeprefix('text_')}", where, split)
                continue
            page_dir, url = values.get("page_dir", ""), values.get("contentUrl", "")
            relative = f"{page_dir}/{ident}.mp4" if page_dir else f"{ident}.mp4"
            extra: dict = {"page_dir": page_dir} if page_dir else {}
            seconds = duration_seconds(values.get("duration", ""))
            if seconds is not None:
                extra["duration"] = seconds
            if url:
                extra["url"] = url
            found = clips.find(relative)
            if found is not None:
                ref, video = ImageRef("file", str(found)), relative
            elif url and not clips.local:
                ref, video = ImageRef("url", url), url
            else:
                yield Skip(ident, "missing_video", relative, split)
                continue
            yield clip_record(ident, split, ref, video, [text], where, **extra)


def _tsv_records(path: Path, split: str, clips: _Clips) -> Iterator[Record | Skip]:
    with open(path, "rb") as f:
        for n, line in enumerate(f):
            line = line.rstrip(b"\r\n")
            where = f"{path.name}:{n + 1}"
            if not line.strip():
                continue
            columns = line.split(b"\t")
            relative = (
                columns[1].decode("utf-8", errors="surrogateescape").strip() if len(columns) > 1 else ""
            )
            if not relative:
                yield Skip(f"{path.name}:{n + 1}", "malformed_line", where, split)
                continue
            name = relative.rsplit("/", 1)[-1]
            ident = clip_stem(name) or name
            before = clips.first_seen(ident, where)
            if before is not None:
                yield Skip(ident, "duplicate_id", f"{where} (same clip as {before})", split)
                continue
            text, reason = clean_text(columns[0])
            if text is None:
                yield Skip(ident, f"caption_{reason.removeprefix('text_')}", where, split)
                continue
            found = clips.find(relative, add_mp4=True)
            if found is None:
                yield Skip(ident, "missing_video", relative, split)
                continue
            if not relative.endswith(found.name):
                relative = f"{relative}.mp4"
            yield clip_record(ident, split, ImageRef("file", str(found)), relative, [text], where)


def read(request: SourceRequest) -> SourceData:
    check_splits(request, "webvid", SPLITS)
    roots = need_sources(request, "webvid", EXPECTED)
    csvs: dict[str, list[Path]] = {}
    tsvs: dict[str, list[Path]] = {}
    warnings: list[str] = []
    for root in roots:
        if root.is_file():
            if root.suffix.lower() == ".csv":
                if not _is_webvid_csv(root):
                    raise DataError(f"{root}: not a WebVid CSV; expected the header {','.join(CSV_COLUMNS)}")
                csvs.setdefault(_split_of(root), []).append(root)
            else:
                tsvs.setdefault(_split_of(root), []).append(root)
            continue
        found_csv = [p for p in (*sorted(root.glob("*.csv")), *sorted(root.glob("metadata/*.csv")))
                     if _is_webvid_csv(p)]  # fmt: skip
        found_tsv = [*sorted(root.glob("*.tsv")), *sorted(root.glob("metadata/*.tsv"))]
        for path in found_csv:
            csvs.setdefault(_split_of(path), []).append(path)
        if found_csv and found_tsv:
            warnings.append(f"{root}: read the WebVid CSVs; ignored {', '.join(p.name for p in found_tsv)}")
        elif found_tsv:
            for path in found_tsv:
                tsvs.setdefault(_split_of(path), []).append(path)
    present = set(csvs) | set(tsvs)
    if not present:
        raise UsageError(f"prepare webvid: no WebVid .csv or .tsv under {', '.join(map(str, roots))}; "
                         f"expected {EXPECTED}")  # fmt: skip
    missing = [s for s in request.splits or () if s not in present]
    if missing:
        raise UsageError(f"prepare webvid: --split {missing[0]} asked for but no such CSV/TSV among --source; "
                         f"expected {EXPECTED}")  # fmt: skip
    videos = find_dir(roots, ["videos"])
    parents = [p.parent for ps in (*csvs.values(), *tsvs.values()) for p in ps]
    video_dirs = existing_dirs([*videos, *roots, *parents])
    wanted = [s for s in SPLITS if s in present and request.wants(s)]

    def records() -> Iterator[Record | Skip]:
        for split in wanted:
            clips = _Clips(video_dirs, local=bool(videos))  # repeated ids are looked for within a split
            for path in csvs.get(split, []):
                yield from _csv_records(path, split, clips)
            for path in tsvs.get(split, []):
                yield from _tsv_records(path, split, clips)

    totals = {s: sum(count_lines(p) - 1 for p in csvs.get(s, [])) + sum(count_lines(p) for p in tsvs.get(s, []))
              for s in wanted}  # fmt: skip
    annotations = [str(p) for s in wanted for p in (*csvs.get(s, []), *tsvs.get(s, []))]
    return SourceData("captions", records(), totals, info={**VIDEO_INFO, "annotations": annotations},
                      warnings=warnings)  # fmt: skip
