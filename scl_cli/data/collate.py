"""Raw shard samples into model inputs: the pixels of an image or clip member, the captions.

A batcher works in two stages, `prepare(item)` per sample and `combine(prepared)` per batch, so
that the training stream can skip a sample that cannot be decoded and take the next one without
decoding the rest of the batch again: `prepare` raises `BadSample` with a reason (one of
`SKIP_REASONS`) for a corrupt image, an unreadable clip, a member lost to a truncated shard (or to
a shard behind a URL that could not be read even after its retries) or a record without captions; other errors are bugs and propagate.
"""

from __future__ import annotations

import json
import random
import zlib
from typing import Any, Protocol

import torch
from PIL import Image, UnidentifiedImageError

from scl_cli.data.tokenizer import TextTokenizer
from scl_cli.data.transforms import ImageTransform
from scl_cli.data.video import VideoError, decode_clip, is_video_member
from scl_cli.errors import DataError

SKIP_REASONS = ("corrupt_image", "truncated_image", "unreadable_video", "empty_video", "truncated_shard",
                "bad_record", "unreadable_shard")  # fmt: skip
ERROR_KEY = "__error__"  # a placeholder sample for a member the shard lost (see data.sampling)


class BadSample(DataError):
    """A sample that cannot be used; `reason` is one of `SKIP_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Batcher(Protocol):
    """What the training stream needs of a collate function to skip bad samples."""

    def prepare(self, item: Any) -> Any: ...

    def combine(self, prepared: list[Any]) -> dict[str, torch.Tensor]: ...


Item = tuple[dict[str, Any], int, random.Random]
"""What a loader hands a collate function per sample: (raw shard sample, global index, the
sample's own generator for its random choices)."""

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def where(sample: dict[str, Any]) -> str:
    return f"sample {sample.get('__key__')}"


def check_readable(sample: dict[str, Any]) -> None:
    """`BadSample` for the placeholder of a member the shard lost (truncated or corrupt tar)."""
    if ERROR_KEY in sample:
        raise BadSample(sample[ERROR_KEY], f"{where(sample)}: {sample[ERROR_KEY]}")


def captions_of(sample: dict[str, Any]) -> list[str]:
    check_readable(sample)
    try:
        captions = json.loads(sample["json"])["captions"]
    except (KeyError, ValueError, TypeError) as err:
        raise BadSample(
            "bad_record", f"{where(sample)}: no readable 'captions' in its .json ({err})"
        ) from err
    if not captions:
        raise BadSample("bad_record", f"{where(sample)}: empty caption list")
    return captions


def decode_image_member(sample: dict[str, Any], data: bytes, transform: ImageTransform,
                        rng: random.Random | None) -> torch.Tensor:  # fmt: skip
    """uint8 [3, S, S] of encoded image bytes; `BadSample` naming the sample when they do not decode."""
    try:
        return transform.from_bytes(data, rng)
    except UnidentifiedImageError as err:
        raise BadSample("corrupt_image", f"{where(sample)}: not an image ({err})") from err
    except OSError as err:
        reason = "truncated_image" if "truncat" in str(err).lower() else "corrupt_image"
        raise BadSample(reason, f"{where(sample)}: {err}") from err
    except (SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError) as err:
        raise BadSample("corrupt_image", f"{where(sample)}: {err}") from err


def sample_pixels(
    sample: dict[str, Any], transform: ImageTransform, rng: random.Random | None, num_frames: int
) -> torch.Tensor:
    """uint8 [T, 3, S, S] of a shard sample: a clip member (mp4, ...) decoded to `num_frames`
    frames, else its image as one frame. `BadSample` naming the sample when it does not decode."""
    check_readable(sample)
    for name, data in sample.items():
        if isinstance(data, bytes) and is_video_member(name):
            try:
                return decode_clip(data, num_frames, transform, rng)
            except VideoError as err:
                reason = err.reason if err.reason in SKIP_REASONS else "unreadable_video"
                raise BadSample(reason, f"{where(sample)}: {err}") from err
    return decode_image_member(sample, _image_bytes(sample), transform, rng).unsqueeze(0)


def _image_bytes(sample: dict[str, Any]) -> bytes:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext]
    raise BadSample("bad_record", f"{where(sample)}: no image ({'/'.join(IMAGE_EXTENSIONS)}) member")


class CaptionBatch:
    """The pre-training batch: each sample's pixels and one of its captions, drawn by its generator.
    Keys: `images` uint8 [B, T, 3, S, S], `text_ids`/`text_mask` [B, L], `index` [B]. L is `max_len`,
    or with `pad_to_multiple` N > 0 the batch's longest caption rounded up to a multiple of N (at
    most `max_len`): the columns cut are padding in every row."""

    def __init__(
        self, tokenizer: TextTokenizer, transform: ImageTransform, max_len: int, num_frames: int,
        pad_to_multiple: int = 0,
    ) -> None:  # fmt: skip
        self.tokenizer, self.transform, self.max_len = tokenizer, transform, max_len
        self.num_frames, self.pad_to_multiple = num_frames, pad_to_multiple

    def prepare(self, item: Item) -> tuple[str, torch.Tensor, int, str]:
        sample, index, rng = item
        caption = rng.choice(captions_of(sample))
        return caption, sample_pixels(sample, self.transform, rng, self.num_frames), index, where(sample)

    def combine(self, prepared: list[tuple[str, torch.Tensor, int, str]]) -> dict[str, torch.Tensor]:
        captions, pixels, indices, names = zip(*prepared, strict=True)
        text_ids, text_mask = trim_padding(
            *self.tokenizer.encode(list(captions), self.max_len), self.pad_to_multiple
        )
        if len({p.shape[0] for p in pixels}) > 1:
            raise DataError(f"{names[0]}: a batch mixes images and clips — give each data set "
                            "its media in the manifest ('media')")  # fmt: skip
        return {
            "images": torch.stack(pixels),
            "text_ids": text_ids,
            "text_mask": text_mask,
            "index": torch.tensor(indices, dtype=torch.long),
        }

    def __call__(self, items: list[Item]) -> dict[str, torch.Tensor]:
        return self.combine([self.prepare(item) for item in items])


def trim_padding(ids: torch.Tensor, mask: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`ids`, `mask` [B, L] cut to the longest row's length rounded up to a multiple of `multiple`
    (0: unchanged). Only columns that are padding in every row go."""
    if multiple <= 0 or ids.shape[1] == 0:
        return ids, mask
    longest = int(mask.sum(dim=1).max()) if mask.shape[0] else 0
    width = min(ids.shape[1], max(multiple, -(-longest // multiple) * multiple))
    return ids[:, :width].contiguous(), mask[:, :width].contiguous()
