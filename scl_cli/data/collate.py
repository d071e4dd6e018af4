"""Raw shard samples into model inputs: the pixels of an image or clip member, the captions."""

from __future__ import annotations

import json
import random
from typing import Any

import torch

from scl_cli.data.tokenizer import TextTokenizer
from scl_cli.data.transforms import ImageTransform
from scl_cli.data.video import VideoError, decode_clip, is_video_member
from scl_cli.errors import DataError

Item = tuple[dict[str, Any], int, random.Random]
"""What a loader hands a collate function per sample: (raw shard sample, global index, the
sample's own generator for its random choices)."""

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def where(sample: dict[str, Any]) -> str:
    return f"sample {sample.get('__key__')}"


def captions_of(sample: dict[str, Any]) -> list[str]:
    try:
        captions = json.loads(sample["json"])["captions"]
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"{where(sample)}: no readable 'captions' in its .json ({err})") from err
    if not captions:
        raise DataError(f"{where(sample)}: empty caption list")
    return captions


def sample_pixels(
    sample: dict[str, Any], transform: ImageTransform, rng: random.Random | None, num_frames: int
) -> torch.Tensor:
    """uint8 [T, 3, S, S] of a shard sample: a clip member (mp4, ...) decoded to `num_frames`
    frames, else its image as one frame. `DataError` naming the sample for an unreadable clip."""
    for name, data in sample.items():
        if isinstance(data, bytes) and is_video_member(name):
            try:
                return decode_clip(data, num_frames, transform, rng)
            except VideoError as err:
                raise DataError(f"{where(sample)}: {err}") from err
    return transform.from_bytes(_image_bytes(sample), rng).unsqueeze(0)


def _image_bytes(sample: dict[str, Any]) -> bytes:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext]
    raise DataError(f"{where(sample)}: no image ({'/'.join(IMAGE_EXTENSIONS)}) member")


def caption_batch(
    items: list[Item], tokenizer: TextTokenizer, transform: ImageTransform, max_len: int, num_frames: int
) -> dict[str, torch.Tensor]:
    """The pre-training batch: each sample's pixels and one of its captions, drawn by its generator."""
    captions, pixels, indices = [], [], []
    for sample, index, rng in items:
        captions.append(rng.choice(captions_of(sample)))
        pixels.append(sample_pixels(sample, transform, rng, num_frames))
        indices.append(index)
    text_ids, text_mask = tokenizer.encode(captions, max_len)
    if len({p.shape[0] for p in pixels}) > 1:
        raise DataError(f"{where(items[0][0])}: a batch mixes images and clips — give each data set "
                        "its media in the manifest ('media')")  # fmt: skip
    return {
        "images": torch.stack(pixels),
        "text_ids": text_ids,
        "text_mask": text_mask,
        "index": torch.tensor(indices, dtype=torch.long),
    }
