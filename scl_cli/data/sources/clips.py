"""Helpers shared by the video sources (WebVid, MSR-VTT, LSMDC): finding clip files, captions,
and the record of one clip.

A clip record's `images` maps the member name "mp4" to the clip (a file or a URL) whatever its
container (an `.avi` is stored as it is; decord reads by content), and its JSON is `{"id",
"captions": [...], "video": relative path or URL, ...}`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from scl_cli.data.sources.base import ImageRef, Record, Skip, clean_text
from scl_cli.data.video import VIDEO_EXTENSIONS

MEMBER = "mp4"
VIDEO_INFO: dict[str, Any] = {"media": {"splits": "video"}}  # manifest.json: every split holds clips


def clip_stem(name: str) -> str | None:
    """`name` without its video extension, or None for a file that is not a clip."""
    stem, dot, ext = name.rpartition(".")
    return stem if dot and ext.lower() in VIDEO_EXTENSIONS else None


def index_clips(dirs: Iterable[Path], recursive: bool) -> dict[str, tuple[Path, str]]:
    """Clip name without extension -> (file, path relative to the folder it was found under), for
    every clip file in `dirs` (and their sub-folders when `recursive`); the first one found wins."""
    found: dict[str, tuple[Path, str]] = {}
    visited: set[str] = set()
    for top in dirs:
        if not top.is_dir():
            continue
        walk = os.walk(top, followlinks=True) if recursive else [(str(top), [], os.listdir(top))]
        for folder, subdirs, files in walk:
            real = os.path.realpath(folder)
            if real in visited:  # a symlinked folder met twice (or a loop)
                subdirs[:] = []
                continue
            visited.add(real)
            subdirs.sort()
            for name in sorted(files):
                stem = clip_stem(name)
                if stem is None or stem in found:
                    continue
                path = Path(folder) / name
                if path.is_file():
                    found[stem] = (path, path.relative_to(top).as_posix())
    return found


def existing_dirs(paths: Iterable[Path]) -> list[Path]:
    """The folders among `paths`, each once, in order."""
    return list(dict.fromkeys(p for p in paths if p.is_dir()))


def add_caption(captions: list[str], raw: object, ident: str, split: str, where: str) -> Skip | None:
    """Append the cleaned caption to `captions`; the caption `Skip` instead when it is unusable
    or already there."""
    text, reason = clean_text(raw)
    if text is None:
        return Skip(ident, f"caption_{reason.removeprefix('text_')}", where, split, "caption")
    if text in captions:
        return Skip(ident, "duplicate_caption", where, split, "caption")
    captions.append(text)
    return None


def clip_record(
    ident: str, split: str, ref: ImageRef, video: str, captions: list[str], where: str, **extra: Any
) -> Record:
    """The record of one clip: member "mp4" = `ref`; JSON `{"id", "captions", "video", **extra}`."""
    meta = {"id": ident, "captions": captions, "video": video, **extra}
    return Record(ident, split, {MEMBER: ref}, meta, where)


def finish(items: Sequence[Record | Skip]) -> list[Record | Skip]:
    """`items` with each record left without a caption replaced by its "no_captions" skip."""
    return [
        Skip(item.id, "no_captions", item.origin, item.split)
        if isinstance(item, Record) and not item.meta["captions"]
        else item
        for item in items
    ]
