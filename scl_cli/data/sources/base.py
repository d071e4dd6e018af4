"""What every source reader yields, and the small helpers they share.

A reader turns one data set's official files into a stream of `Record`s (one future shard sample:
its id, split, image references and JSON fields) and `Skip`s (an input, or part of one, that was
dropped while reading, with its reason). Images are only *referenced* here (a file, a URL or a
member of a tar); fetching, checking and re-encoding them happens later, in the shard workers.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scl_cli.errors import DataError, UsageError

ProgressFn = Callable[[str, int, int], None]
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class ImageRef:
    """Where an image's encoded bytes are: `kind` "file" (location = path), "url", or "tar"
    (location = tar path, bytes `offset`..`offset + size`)."""

    kind: str
    location: str
    offset: int = 0
    size: int = 0

    def describe(self) -> str:
        return f"{self.location}@{self.offset}" if self.kind == "tar" else self.location


@dataclass(slots=True)
class Record:
    """One sample to write: `images` maps a member name ("jpg", "img0.jpg", ...) to its image;
    `meta` is the sample's JSON (it holds "id"); `origin` says where it was read (file:line)."""

    id: str
    split: str
    images: dict[str, ImageRef]
    meta: dict[str, Any]
    origin: str = ""

    @property
    def key(self) -> str:
        """The tar member prefix: the id with every character WebDataset could misread replaced."""
        return sample_key(self.id)

    def identity(self) -> list:
        """What a shard's resume check compares: id, image references and JSON fields."""
        refs = {name: [ref.kind, ref.location, ref.offset, ref.size] for name, ref in self.images.items()}
        return [self.id, refs, self.meta]


@dataclass(slots=True)
class Skip:
    """An input (`what` = "sample") or part of one ("caption", "question", ...) left out, and why."""

    id: str
    reason: str
    source: str
    split: str = ""
    what: str = "sample"

    def to_json(self) -> dict[str, str]:
        out = {"id": self.id, "reason": self.reason, "source": self.source, "what": self.what}
        if self.split:
            out["split"] = self.split
        return out


@dataclass
class SourceData:
    """A reader's result. `records` yields `Record`s and `Skip`s lazily, in a fixed order.
    `totals` (records per split, if known up front) sizes the progress bar; `splits` names the
    splits it yields when `totals` cannot (reading stops early under --limit); `files` are extra
    JSON files to write beside the manifest (e.g. the VQA answer list); `info` and `warnings`
    go into the manifest."""

    task: str
    records: Iterable[Record | Skip]
    totals: dict[str, int] | None = None
    splits: tuple[str, ...] | None = None
    files: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SourceRequest:
    """What the user asked for: `sources` (the --source paths), `webdataset` (--webdataset
    folders), `splits` (None = every split the inputs have), and a progress callback."""

    sources: tuple[Path, ...] = ()
    webdataset: tuple[Path, ...] = ()
    splits: tuple[str, ...] | None = None
    progress: ProgressFn | None = None

    def wants(self, split: str) -> bool:
        return self.splits is None or split in self.splits

    def report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)


def sample_key(identifier: str) -> str:
    return _KEY_UNSAFE.sub("_", identifier)


# ----------------------------------------------------------------------------- text
def clean_text(value: object) -> tuple[str | None, str | None]:
    """(text with whitespace runs collapsed, None) or (None, reason): "text_not_utf8" for bytes
    that are not UTF-8 (or lone surrogates left by a non-UTF-8 file), "text_empty", "text_not_a_string"."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, "text_not_utf8"
    if not isinstance(value, str):
        return None, "text_not_a_string"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, "text_not_utf8"
    text = " ".join(value.split())
    return (text, None) if text else (None, "text_empty")


def unique(items: Iterable[str]) -> list[str]:
    """Items without repeats, first occurrence kept (a stable `set()`)."""
    return list(dict.fromkeys(items))


# ----------------------------------------------------------------------------- files
def read_json(path: Path) -> Any:
    """A whole JSON file. Bytes that are not UTF-8 survive as lone surrogates (so `clean_text`
    can skip just the strings holding them); a file that is not JSON is a `DataError`."""
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
        return json.loads(text.removeprefix("\ufeff"))
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err


def iter_json_array(
    path: Path, chunk: int = 1 << 20, on_read: Callable[[int], None] | None = None
) -> Iterator[Any]:
    """The elements of a file holding one JSON array, parsed one at a time (memory stays flat on
    multi-GB files such as Visual Genome's region descriptions). `on_read(bytes so far)` is called
    after each chunk."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    with open(path, "rb") as f:
        buf, pos, eof = "", 0, False

        def refill() -> None:
            nonlocal buf, pos, eof
            data = f.read(chunk)
            eof = not data
            buf, pos = buf[pos:] + utf8.decode(data, final=eof), 0
            if on_read is not None:
                on_read(f.tell())

        def next_char() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if eof:
                    raise DataError(f"{path}: ends before its JSON array is closed")
                refill()

        if next_char() != "[":
            raise DataError(f"{path}: expected a JSON array")
        pos += 1
        expect_comma = False
        while True:
            char = next_char()
            if char == "]":
                return
            if expect_comma:
                if char != ",":
                    raise DataError(f"{path}: expected ',' between array elements")
                pos, expect_comma = pos + 1, False
                continue
            try:
                item, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as err:
                if eof:
                    raise DataError(f"{path}: not valid JSON ({err})") from err
                refill()
                continue
            if end == len(buf) and not eof:  # a number cut by the buffer end would parse short
                refill()
                continue
            yield item
            pos, expect_comma = end, True


def count_lines(path: Path) -> int:
    """Lines of a text file, a last line without a newline included."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def find(roots: Sequence[Path], names: Sequence[str], subdirs: Sequence[str] = ("",)) -> Path | None:
    """The first `root/subdir/name` that exists (a root that is itself one of `names` counts)."""
    for root in roots:
        if root.is_file() and root.name in names:
            return root
    for root in roots:
        for sub in subdirs:
            for name in names:
                candidate = root / sub / name
                if candidate.is_file():
                    return candidate
    return None


def find_dir(roots: Sequence[Path], names: Sequence[str]) -> list[Path]:
    """Every `root/name`, `root/*/name` folder (and each root that is itself named so)."""
    found: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        if root.name in names:
            found.append(root)
        for name in names:
            found += [p for p in (root / name, *root.glob(f"*/{name}")) if p.is_dir()]
    return unique_paths(found)


def unique_paths(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(p.resolve() for p in paths))


def first_file(candidates: Iterable[Path]) -> Path | None:
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def need_sources(request: SourceRequest, name: str, expected: str) -> list[Path]:
    """The --source paths, each checked to exist; `UsageError` saying what `name` expects otherwise."""
    if not request.sources:
        raise UsageError(f"prepare {name}: no --source given; expected {expected}")
    missing = [p for p in request.sources if not p.exists()]
    if missing:
        raise UsageError(f"prepare {name}: --source {missing[0]} does not exist; expected {expected}")
    return list(request.sources)


def check_splits(request: SourceRequest, name: str, known: Sequence[str]) -> None:
    unknown = [s for s in request.splits or () if s not in known]
    if unknown:
        raise UsageError(f"prepare {name}: unknown --split {unknown[0]} (known: {', '.join(known)})")
