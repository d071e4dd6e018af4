"""An existing img2dataset download in WebDataset format (`--webdataset DIR`, for CC3M and SBU).

DIR holds `00000.tar`, `00001.tar`, ... with samples `KEY.jpg` + `KEY.txt` (caption) + `KEY.json`
(`url`, `caption`, `key`, `status`, `width`, `height`, `original_width`, ...); `.parquet` and
`_stats.json` files beside them are optional. Only tar headers and the small text members are
read here; image bytes are referenced by offset and read by the shard workers. One sample per
image: `{"id" (the img2dataset key), "url", "captions": [one]}`.

img2dataset's default `--resize_mode border --image_size 256` letterboxes every image to
256x256, below SCL's 288 px: the manifest gets a warning when the images look like that.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scl_cli.data.sources.base import (
    ImageRef,
    Record,
    Skip,
    SourceData,
    SourceRequest,
    clean_text,
    sample_key,
)
from scl_cli.errors import UsageError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
PRETRAIN_SIZE = 288


def _members(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, {ext: bytes for text members | (offset, size) for images}) per sample of one tar."""
    with tarfile.open(path, "r:") as tar:
        key, parts = None, {}
        while (member := tar.next()) is not None:
            tar.members = []
            if not member.isfile():
                continue
            name = Path(member.name).name
            stem, _, ext = name.partition(".")
            if stem != key:
                if key is not None:
                    yield key, parts
                key, parts = stem, {}
            if ext.lower() in IMAGE_EXTENSIONS:
                parts[ext.lower()] = (member.offset_data, member.size)
            elif ext in ("txt", "json"):
                f = tar.extractfile(member)
                parts[ext] = f.read() if f is not None else b""
        if key is not None:
            yield key, parts


def _metadata(raw: bytes | None) -> dict[str, Any]:
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


class _SizeCheck:
    """Looks at the size of the first sample of each tar to warn (once each) about letterboxed or
    small downloads."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.checked: set[Path] = set()
        self.kinds: set[str] = set()

    def see(self, meta: dict[str, Any], tar_path: Path) -> None:
        width, height = meta.get("width"), meta.get("height")
        if tar_path in self.checked or not isinstance(width, int) or not isinstance(height, int):
            return
        self.checked.add(tar_path)
        ow, oh = meta.get("original_width"), meta.get("original_height")
        if width == height and isinstance(ow, int) and isinstance(oh, int) and ow != oh:
            self._warn("letterboxed", f"{tar_path}: images look letterboxed to {width}x{height} (img2dataset --resize_mode "
                       "border); download again with --resize_mode keep_ratio and a larger --image_size")  # fmt: skip
        if min(width, height) < PRETRAIN_SIZE:
            self._warn(
                "small",
                f"{tar_path}: images are {width}x{height}, smaller than the {PRETRAIN_SIZE} px pre-training size",
            )

    def _warn(self, kind: str, text: str) -> None:
        if kind not in self.kinds:
            self.kinds.add(kind)
            self.warnings.append(text)


def _records(dirs: list[Path], split: str, check: _SizeCheck) -> Iterator[Record | Skip]:
    seen: set[str] = set()
    for directory in dirs:
        for tar_path in sorted(directory.glob("*.tar")):
            try:
                for key, parts in _members(tar_path):
                    meta = _metadata(parts.get("json"))
                    check.see(meta, tar_path)
                    ident = sample_key(str(meta.get("key") or key))
                    where = f"{tar_path}:{key}"
                    if ident in seen:
                        yield Skip(ident, "duplicate_id", where, split)
                        continue
                    seen.add(ident)
                    image = next((ext for ext in IMAGE_EXTENSIONS if ext in parts), None)
                    if image is None:
                        status = meta.get("status")
                        reason = "download_failed" if status and status != "success" else "missing_image"
                        yield Skip(ident, reason, where, split)
                        continue
                    caption = parts.get("txt", meta.get("caption"))
                    text, reason = clean_text(caption)
                    if text is None:
                        yield Skip(ident, f"caption_{reason.removeprefix('text_')}", where, split)
                        continue
                    offset, size = parts[image]
                    fields = {"id": ident, "url": meta.get("url"), "captions": [text]}
                    yield Record(
                        ident, split, {"jpg": ImageRef("tar", str(tar_path), offset, size)}, fields, where
                    )
            except (tarfile.TarError, OSError, EOFError) as err:
                yield Skip(tar_path.name, "corrupt_tar", f"{tar_path} ({err})", split)


def _total(dirs: list[Path]) -> int:
    """Successful samples according to img2dataset's `*_stats.json` (0 when any is missing)."""
    total = 0
    for directory in dirs:
        for tar_path in directory.glob("*.tar"):
            stats = _metadata((tar_path.parent / f"{tar_path.stem}_stats.json").read_bytes()
                              if (tar_path.parent / f"{tar_path.stem}_stats.json").is_file() else None)  # fmt: skip
            if not isinstance(stats.get("successes"), int):
                return 0
            total += stats["successes"]
    return total


def read(request: SourceRequest, name: str) -> SourceData:
    """Records of the --webdataset folders; they all go to the single --split (default train)."""
    if request.splits and len(request.splits) > 1:
        raise UsageError(
            f"prepare {name} --webdataset: give at most one --split (got {', '.join(request.splits)})"
        )
    split = request.splits[0] if request.splits else "train"
    dirs = list(request.webdataset)
    for directory in dirs:
        if not directory.is_dir() or not any(directory.glob("*.tar")):
            raise UsageError(f"prepare {name}: --webdataset {directory} holds no .tar shards "
                             "(expected an img2dataset --output_format webdataset folder)")  # fmt: skip
    check = _SizeCheck()
    total = _total(dirs)

    def records() -> Iterator[Record | Skip]:
        yield from _records(dirs, split, check)

    return SourceData("captions", records(), {split: total} if total else None, splits=(split,),
                      info={"webdataset": [str(d) for d in dirs]}, warnings=check.warnings)  # fmt: skip
