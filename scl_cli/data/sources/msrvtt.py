"""MSR-VTT, text-video retrieval: the 9k train list and the 1k-A test (JSFusion) split.

`--source ROOT` with either layout (several --source paths may split the files up):
- Frozen-in-Time (`MSRVTT.zip`, what SCL reads): `MSRVTT/videos/all/videoN.mp4`,
  `MSRVTT/annotation/MSR_VTT.json` (`{"annotations": [{"image_id", "caption", "id"}]}`) and
  `MSRVTT/high-quality/structured-symlinks/{train_list_jsfusion.txt, val_list_jsfusion.txt,
  jsfusion_val_caption_idx.pkl}`; ROOT may be `MSRVTT/` itself or its parent.
- CLIP4Clip (`msrvtt_data.zip`): `MSRVTT_train.9k.csv` (column `video_id`),
  `MSRVTT_JSFUSION_test.csv` (`key,vid_key,video_id,sentence`), `MSRVTT_data.json`
  (`{"videos": [...], "sentences": [{"video_id", "caption", "sen_id"}]}`) and
  `MSRVTT_Videos/<video_id>.mp4`.

Splits: train (the 9,000 videos of the 9k list, in list order, each with all its captions, 20,
in file order; repeats are kept, as the official loaders keep them: each is another annotator)
and test (1k-A: 1,000 video-caption pairs, one caption per
video, in the official order: the rows of `MSRVTT_JSFUSION_test.csv`, or the lines of
`val_list_jsfusion.txt` with the caption `jsfusion_val_caption_idx.pkl` picks out of that video's
captions in `MSR_VTT.json` order). Captions are paired with videos by video id, never by position
or sorted order, so test sample i is video i with its query i. Every split whose files are present
is prepared unless --split says otherwise. One sample per video: `KEY.mp4` and `{"id" (video id),
"captions", "video" (file name), "category" (when the JSON has it); train: "sen_ids"; test:
"test_index" (position in the official order), "key" (CSV) or "caption_index" (pkl)}`.
"""

from __future__ import annotations

import csv
import pickle
from collections import Counter
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
    find_dir,
    need_sources,
    read_json,
)
from scl_cli.data.sources.clips import (
    VIDEO_INFO,
    clip_record,
    existing_dirs,
    finish,
    index_clips,
)
from scl_cli.errors import DataError, UsageError

SPLITS = ("train", "test")
TEST_CSV = "MSRVTT_JSFUSION_test.csv"
TRAIN_CSV = "MSRVTT_train.9k.csv"
DATA_JSON = "MSRVTT_data.json"
FROZEN_JSON = "MSR_VTT.json"
TRAIN_LIST = "train_list_jsfusion.txt"
TEST_LIST = "val_list_jsfusion.txt"
CAPTION_INDEX = "jsfusion_val_caption_idx.pkl"
EXPECTED = (
    f"ROOT with MSRVTT/videos/all/, MSRVTT/annotation/{FROZEN_JSON} and "
    f"MSRVTT/high-quality/structured-symlinks/{{{TRAIN_LIST}, {TEST_LIST}, {CAPTION_INDEX}}} (Frozen-in-Time), "
    f"or {TRAIN_CSV}, {TEST_CSV}, {DATA_JSON} and MSRVTT_Videos/ (CLIP4Clip)"
)
_SUBDIRS = tuple(
    f"{top}{sub}" for top in ("", "MSRVTT/", "msrvtt_data/", "data/", "data/MSRVTT/")
    for sub in ("", "annotation", "high-quality/structured-symlinks", "structured-symlinks")
)  # fmt: skip
_VIDEO_DIRS = ("videos/all", "MSRVTT/videos/all", "MSRVTT_Videos", "msrvtt_data/MSRVTT_Videos", "videos",
               "MSRVTT/videos", "data/MSRVTT/videos/all")  # fmt: skip


class _IndexUnpickler(pickle.Unpickler):
    """Reads the caption-index pickle (a dict of str -> int, numpy integers included) and
    nothing else: no other class can be built from the file."""

    _ALLOWED = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("collections", "OrderedDict")}  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a caption index")


def _caption_index(path: Path) -> dict[str, int]:
    try:
        with open(path, "rb") as f:
            data = _IndexUnpickler(f).load()
        if hasattr(data, "item") and getattr(data, "shape", None) == ():  # np.save of a dict
            data = data.item()
        return {str(video): int(index) for video, index in dict(data).items()}
    except (OSError, pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{path}: not a pickled {{video id: caption index}} dict ({err})") from err


def _captions(path: Path) -> tuple[dict[str, list[tuple[Any, Any]]], dict[str, Any]]:
    """video id -> [(raw caption, sentence id), ...] in file order, and video id -> category."""
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("sentences"), list):
        items, video_key, id_key = data["sentences"], "video_id", "sen_id"
    elif isinstance(data, dict) and isinstance(data.get("annotations"), list):
        items, video_key, id_key = data["annotations"], "image_id", "id"
    else:
        raise DataError(f'{path}: expected {{"sentences": [...]}} ({DATA_JSON}) or {{"annotations": [...]}} '
                        f"({FROZEN_JSON})")  # fmt: skip
    by_video: dict[str, list[tuple[Any, Any]]] = {}
    for n, item in enumerate(items):
        if isinstance(item, dict) and item.get(video_key) is not None:
            by_video.setdefault(str(item[video_key]), []).append((item.get("caption"), item.get(id_key, n)))
    categories = {
        str(v["video_id"]): v["category"]
        for v in data.get("videos") or []
        if isinstance(v, dict) and "video_id" in v and "category" in v
    }
    return by_video, categories


def _list_file(path: Path) -> list[tuple[str, str]]:
    """(video id, where) per line of a list file, or per row of a CSV with a `video_id` column."""
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    if path.suffix.lower() != ".csv":
        return [
            (line.strip(), f"{path.name}:{n + 1}") for n, line in enumerate(text.splitlines()) if line.strip()
        ]
    rows = list(csv.DictReader(text.splitlines()))
    if rows and "video_id" not in rows[0]:
        raise DataError(f"{path}: no 'video_id' column")
    return [(row["video_id"].strip(), f"{path.name}:{n + 2}") for n, row in enumerate(rows)]


class _Reader:
    def __init__(self, roots: list[Path], request: SourceRequest) -> None:
        self.roots = roots
        self.request = request
        self._clips: dict[str, tuple[Path, str]] | None = None
        self.caption_files: dict[Path, tuple[dict, dict]] = {}  # caption file -> (captions, categories)
        self.warnings: list[str] = []

    def find(self, name: str) -> Path | None:
        return find(self.roots, [name], _SUBDIRS)

    def clip(self, video: str) -> tuple[Path, str] | None:
        if self._clips is None:
            dirs = [r / d for r in self.roots for d in _VIDEO_DIRS]
            dirs += [*find_dir(self.roots, ["MSRVTT_Videos", "all"]), *self.roots]
            self._clips = index_clips(existing_dirs(dirs), recursive=False)
        return self._clips.get(video)

    def captions(self, prefer: str) -> tuple[Path, dict, dict]:
        """The caption file (`prefer`, else the other one), read once: (path, captions, categories)."""
        path = self.find(prefer) or self.find(FROZEN_JSON if prefer == DATA_JSON else DATA_JSON)
        if path is None:
            raise UsageError(f"prepare msrvtt: no {DATA_JSON} or {FROZEN_JSON} (the captions) under "
                             f"{', '.join(map(str, self.roots))}; expected {EXPECTED}")  # fmt: skip
        if path not in self.caption_files:
            self.request.report(f"read {path.name}", 0, 1)
            self.caption_files[path] = _captions(path)
            self.request.report(f"read {path.name}", 1, 1)
        return (path, *self.caption_files[path])

    def categories(self) -> dict[str, Any]:
        """video id -> category when a caption file is there (only MSRVTT_data.json has them)."""
        if self.find(DATA_JSON) is None and self.find(FROZEN_JSON) is None:
            return {}
        return self.captions(DATA_JSON)[2]

    def record(self, video: str, split: str, captions: list[str], where: str, **extra: Any) -> Record | Skip:
        found = self.clip(video)
        if found is None:
            return Skip(video, "missing_video", f"{video}.mp4 (in {where})", split)
        path, relative = found
        return clip_record(video, split, ImageRef("file", str(path)), relative, captions, where, **extra)

    def train(self, listing: Path) -> list[Record | Skip]:
        path, by_video, categories = self.captions(DATA_JSON)
        out: list[Record | Skip] = []
        seen: set[str] = set()
        for video, where in _list_file(listing):
            if video in seen:
                out.append(Skip(video, "duplicate_id", where, "train"))
                continue
            seen.add(video)
            captions: list[str] = []
            sen_ids: list[Any] = []
            for raw, sen_id in by_video.get(video, []):
                text, reason = clean_text(raw)
                if text is None:
                    out.append(Skip(f"{video}#{sen_id}", f"caption_{reason.removeprefix('text_')}",
                                    f"{path.name} ({video})", "train", "caption"))  # fmt: skip
                    continue
                captions.append(text)  # a repeat too: it weighs as much as in the official loaders
                sen_ids.append(sen_id)
            extra = {"category": categories[video]} if video in categories else {}
            out.append(self.record(video, "train", captions, where, sen_ids=sen_ids, **extra))
        return finish(out)

    def test_csv(self, path: Path) -> list[Record | Skip]:
        text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
        rows = list(csv.DictReader(text.splitlines()))
        if rows and not {"video_id", "sentence"} <= set(rows[0]):
            raise DataError(f"{path}: expected the header key,vid_key,video_id,sentence")
        categories = self.categories()
        pairs = [((row["video_id"] or "").strip(), row["sentence"], {"key": row.get("key")}, f"{path.name}:{n + 2}")
                 for n, row in enumerate(rows)]  # fmt: skip
        return self._test_pairs(pairs, categories)

    def test_list(self, listing: Path, index_file: Path) -> list[Record | Skip]:
        path, by_video, categories = self.captions(FROZEN_JSON)
        if path.name != FROZEN_JSON:
            self.warnings.append(
                f"{CAPTION_INDEX} indexes the captions of {FROZEN_JSON}; read {path.name} instead"
            )
        chosen = _caption_index(index_file)
        pairs: list[tuple[str, Any, dict, str]] = []
        for video, where in _list_file(listing):
            index = chosen.get(video)
            captions = by_video.get(video, [])
            if index is None or not 0 <= index < len(captions):
                reason = "no_captions" if not captions else "missing_caption_index"
                pairs.append((video, None, {"reason": reason}, where))
                continue
            pairs.append((video, captions[index][0], {"caption_index": index}, where))
        return self._test_pairs(pairs, categories)

    def _test_pairs(self, pairs: list[tuple[str, Any, dict, str]], categories: dict) -> list[Record | Skip]:
        """One record per (video, caption) pair, in the given order: sample i holds query i."""
        out: list[Record | Skip] = []
        seen: set[str] = set()
        for n, (video, raw, extra, where) in enumerate(pairs):
            if not video:
                out.append(Skip(f"test[{n}]", "malformed_line", where, "test"))
                continue
            if video in seen:
                out.append(Skip(video, "duplicate_id", where, "test"))
                continue
            seen.add(video)
            if "reason" in extra:
                out.append(Skip(video, extra["reason"], where, "test"))
                continue
            text, reason = clean_text(raw)
            if text is None:
                out.append(Skip(video, f"caption_{reason.removeprefix('text_')}", where, "test"))
                continue
            info = {k: v for k, v in extra.items() if v is not None}
            if video in categories:
                info["category"] = categories[video]
            out.append(self.record(video, "test", [text], where, test_index=n, **info))
        return out


def read(request: SourceRequest) -> SourceData:
    check_splits(request, "msrvtt", SPLITS)
    roots = need_sources(request, "msrvtt", EXPECTED)
    reader = _Reader(roots, request)
    train_list = reader.find(TRAIN_CSV) or reader.find(TRAIN_LIST)
    test_csv = reader.find(TEST_CSV)
    test_list, index_file = reader.find(TEST_LIST), reader.find(CAPTION_INDEX)
    has_test = test_csv is not None or (test_list is not None and index_file is not None)
    present = {"train": train_list is not None, "test": has_test}
    missing = [s for s in request.splits or () if not present[s]]
    if missing or not any(present.values()):
        what = {
            "train": f"{TRAIN_CSV} or {TRAIN_LIST}",
            "test": f"{TEST_CSV} or {TEST_LIST} + {CAPTION_INDEX}",
        }
        split = missing[0] if missing else "test"
        raise UsageError(f"prepare msrvtt: no {what[split]} ({split} split) under {', '.join(map(str, roots))}; "
                         f"expected {EXPECTED}")  # fmt: skip
    records: list[Record | Skip] = []
    annotations: list[str] = []
    if request.wants("train") and train_list is not None:
        records += reader.train(train_list)
        annotations.append(str(train_list))
    if request.wants("test") and has_test:
        if test_csv is not None:
            records += reader.test_csv(test_csv)
            annotations.append(str(test_csv))
        elif test_list is not None and index_file is not None:
            records += reader.test_list(test_list, index_file)
            annotations += [str(test_list), str(index_file)]
    annotations += [str(path) for path in reader.caption_files]
    for split, there in present.items():
        if not there and request.splits is None:
            reader.warnings.append(f"no {split} split files found; only the other split was written")
    totals = Counter(r.split for r in records if isinstance(r, Record))
    wanted = tuple(s for s in SPLITS if present[s] and request.wants(s))
    return SourceData("captions", records, {s: totals.get(s, 0) for s in wanted},
                      info={**VIDEO_INFO, "annotations": annotations}, warnings=reader.warnings)  # fmt: skip
