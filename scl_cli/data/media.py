"""Images and videos given by file, by encoded bytes (an upload) or as samples of prepared shards,
turned into the uint8 pixels `[T, 3, H, W]` the vision encoder takes (T = 1 for an image). Used by
the inference API (`scl_cli.inference`), indexing and search.

A video (an animated GIF/WebP, or an mp4/webm/mov/mkv/avi file when PyAV is installed) becomes
`frames` frames spread evenly over its length; the model's clip feature is the mean of the frame
class tokens. Anything that cannot be decoded raises `MediaError` with a short reason, which the
indexer counts and skips and the API and server report.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageSequence, UnidentifiedImageError

from scl_cli.data.transforms import ImageTransform
from scl_cli.data.video import VIDEO_EXTENSIONS, VideoError, decode_clip

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
MEDIA_EXTS = IMAGE_EXTS + VIDEO_EXTENSIONS
SHARD_MEDIA_KEYS = MEDIA_EXTS


class MediaError(Exception):
    """A file or sample that cannot be turned into pixels; `str(err)` is the reason shown in counts."""


@dataclass(frozen=True)
class Media:
    """One indexed item. `path` (a file) or `shard` + `key` (a sample in a prepared data set)."""

    path: str | None = None
    shard: str | None = None
    key: str | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Media:
        return cls(meta.get("path"), meta.get("shard"), meta.get("key"))

    @property
    def label(self) -> str:
        return self.path if self.path is not None else f"{self.shard}#{self.key}"

    def exists(self) -> bool:
        return Path(self.path if self.path is not None else str(self.shard)).is_file()


def list_media_files(folder: Path) -> list[Path]:
    """Image and video files under `folder`, recursively, in a stable (sorted) order."""
    return sorted(
        p.resolve() for p in Path(folder).rglob("*")
        if p.suffix.lower().lstrip(".") in MEDIA_EXTS and p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip


def _even(count: int, frames: int) -> list[int]:
    if count <= frames:
        return list(range(count))
    return [int((i + 0.5) * count / frames) for i in range(frames)]


def _pil_frames(image: Image.Image, frames: int) -> list[Image.Image]:
    wanted = set(_even(getattr(image, "n_frames", 1), frames))
    return [f.convert("RGB") for i, f in enumerate(ImageSequence.Iterator(image)) if i in wanted]


def _video_frames(data: bytes, frames: int) -> list[Image.Image]:
    try:
        import av  # type: ignore[import-not-found]
    except ImportError:
        raise MediaError("video without a decoder (pip install av)") from None
    try:
        with av.open(io.BytesIO(data)) as container:
            decoded = [f.to_image() for f in container.decode(video=0)]
    except Exception as err:  # PyAV raises many error types for broken files
        raise MediaError("unreadable video") from err
    if not decoded:
        raise MediaError("video without frames")
    return [decoded[i] for i in _even(len(decoded), frames)]


def sniff_video_ext(data: bytes) -> str | None:
    """ "mp4" / "webm" / "avi" when the bytes start like such a container, else None (for uploads
    without a usable file name)."""
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


def decode_media(data: bytes, ext: str, transform: ImageTransform, frames: int) -> torch.Tensor:
    """Encoded bytes of an image or video (`ext` without the dot; "" = find out from the bytes)
    -> uint8 [T, 3, H, W], T <= frames."""
    if not data:
        raise MediaError("empty file")
    ext = ext.lower() or sniff_video_ext(data) or ""
    if ext in VIDEO_EXTENSIONS:
        try:  # decord, the frames and crop training and `scl eval` use (middle frame of each segment)
            return decode_clip(data, frames, transform)
        except VideoError as err:
            raise MediaError(err.reason.replace("_", " ")) from err
        except ImportError:  # no decord wheel for this platform: PyAV, evenly spread frames
            images = _video_frames(data, frames)
    else:
        try:
            image = Image.open(io.BytesIO(data))
            if getattr(image, "n_frames", 1) <= 1:
                # Exactly the pixels training and `scl eval` see (draft-mode JPEG decode included).
                return transform.from_bytes(data).unsqueeze(0)
            images = _pil_frames(image, frames)
        except (
            UnidentifiedImageError,
            OSError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombError,
        ) as err:
            raise MediaError("unreadable image") from err
    return torch.stack([transform.pixels(image) for image in images])


def load_file(path: Path, transform: ImageTransform, frames: int) -> torch.Tensor:
    """uint8 [T, 3, H, W] of an image or video file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MediaError("missing file") from None
    except OSError as err:
        raise MediaError("unreadable file") from err
    return decode_media(data, Path(path).suffix.lstrip("."), transform, frames)


def sample_media(sample: dict[str, Any]) -> tuple[bytes, str]:
    """(bytes, ext) of a shard sample's image or video."""
    for ext in SHARD_MEDIA_KEYS:
        if ext in sample:
            return sample[ext], ext
    raise MediaError("sample without an image or video")


def read_shard_samples(shard: Path, keys: set[str]) -> Iterator[dict[str, Any]]:
    """The samples of `shard` whose key is in `keys` (members grouped by name up to the first dot)."""
    with tarfile.open(shard, "r:") as tar:
        found: dict[str, dict[str, Any]] = {}
        for member in tar:
            key, _, ext = member.name.partition(".")
            if member.isfile() and key in keys:
                f = tar.extractfile(member)
                assert f is not None
                found.setdefault(key, {"__key__": key})[ext] = f.read()
        yield from found.values()


def load_many(items: list[Media], transform: ImageTransform, frames: int) -> list[torch.Tensor | MediaError]:
    """Pixels of each item (files and shard samples), or the `MediaError` saying why not."""
    out: list[torch.Tensor | MediaError] = [MediaError("missing file")] * len(items)
    by_shard: dict[str, dict[str, list[int]]] = {}
    for i, item in enumerate(items):
        if item.path is not None:
            try:
                out[i] = load_file(Path(item.path), transform, frames)
            except MediaError as err:
                out[i] = err
        else:
            by_shard.setdefault(str(item.shard), {}).setdefault(str(item.key), []).append(i)
    for shard, wanted in by_shard.items():
        if not Path(shard).is_file():
            continue  # stays "missing file"
        for sample in read_shard_samples(Path(shard), set(wanted)):
            for i in wanted[sample["__key__"]]:
                try:
                    out[i] = decode_media(*sample_media(sample), transform, frames)
                except MediaError as err:
                    out[i] = err
    return out
