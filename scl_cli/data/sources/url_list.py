"""Helpers shared by the caption-list sources (CC3M, SBU): URL records with duplicate checks, and
the ViLT layout of already downloaded images (`annot.json`: a list of `[image_path, caption]`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from scl_cli.data.sources.base import ImageRef, Record, Skip, clean_text, read_json, sample_key
from scl_cli.errors import DataError


class UrlRecords:
    """Builds one-caption records from (url, caption) lines, reporting repeated URLs (the first
    occurrence is kept, never silently doubled)."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}  # url -> id of its first record

    def make(
        self, ident: str, split: str, url: bytes | str, caption: bytes | str, where: str
    ) -> Record | Skip:
        text, reason = clean_text(caption)
        if text is None:
            return Skip(ident, f"caption_{reason.removeprefix('text_')}", where, split)
        url_text, _ = clean_text(url)
        if not url_text:
            return Skip(ident, "missing_url", where, split)
        if url_text in self.seen:
            return Skip(ident, "duplicate_url", f"{where} (same URL as {self.seen[url_text]})", split)
        self.seen[url_text] = ident
        meta = {"id": ident, "url": url_text, "captions": [text]}
        return Record(ident, split, {"jpg": ImageRef("url", url_text)}, meta, where)


def url_basename_id(url: bytes | str, fallback: str) -> str:
    """`4385058960_b0f291553e` for `http://static.flickr.com/2723/4385058960_b0f291553e.jpg`."""
    text = url.decode("utf-8", errors="replace") if isinstance(url, bytes) else url
    try:
        stem = Path(urlsplit(text.strip()).path).stem
    except ValueError:
        stem = ""
    return sample_key(stem) if stem else fallback


def read_vilt_annotations(path: Path, split: str) -> Iterator[Record | Skip]:
    """Records of a ViLT annotation list `[[relative image path, caption], ...]`; images are
    relative to the folder holding the file. Keys are file basenames; a repeated basename is
    reported and skipped (ViLT silently kept the last)."""
    entries = read_json(path)
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON list of [image_path, caption]")
    seen: set[str] = set()
    for n, entry in enumerate(entries):
        where = f"{path}:[{n}]"
        if not (isinstance(entry, list) and len(entry) >= 2 and isinstance(entry[0], str)):
            yield Skip(f"[{n}]", "malformed_entry", where, split)
            continue
        ident = sample_key(Path(entry[0]).stem)
        if ident in seen:
            yield Skip(ident, "duplicate_id", where, split)
            continue
        seen.add(ident)
        text, reason = clean_text(entry[1])
        if text is None:
            yield Skip(ident, f"caption_{reason.removeprefix('text_')}", where, split)
            continue
        image = path.parent / entry[0]
        if not image.is_file():
            yield Skip(ident, "missing_image", str(image), split)
            continue
        meta = {"id": ident, "captions": [text]}
        yield Record(ident, split, {"jpg": ImageRef("file", str(image))}, meta, where)
