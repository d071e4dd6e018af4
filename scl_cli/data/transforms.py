"""Image transforms: decode, crop/resize to a square (normalisation: `model.preprocess`).

Randomness comes from a `random.Random` the caller passes in (one per sample), so the loader can
reproduce any sample's crop without replaying the stream. No horizontal flips: they would make
"left of" captions false.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image

from scl_cli.model.preprocess import normalize

CROP_RATIO = (3 / 4, 4 / 3)

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels


def decode_image(data: bytes, min_side: int | None = None) -> Image.Image:
    """RGB image from encoded bytes. With `min_side`, a JPEG is decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) that keeps both sides at least `min_side` px — much cheaper for large sources."""
    image = Image.open(io.BytesIO(data))
    if min_side is not None:
        image.draft("RGB", (min_side, min_side))
    if image.mode == "RGB":  # convert() would copy the decoded pixels once more
        image.load()
        return image
    return image.convert("RGB")


def random_resized_crop_box(
    width: int,
    height: int,
    rng: random.Random,
    scale: tuple[float, float],
    ratio: tuple[float, float] = CROP_RATIO,
) -> Box:
    """A crop covering `scale` of the area with aspect ratio in `ratio` (torchvision's rule:
    ten tries, then the largest centred crop within the ratio range)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return (left, top, left + w, top + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def center_square_box(width: int, height: int) -> Box:
    """The central square: resizing it equals 'resize the shorter side, then centre-crop'."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


class ImageTransform:
    """PIL image -> float tensor [3, image_size, image_size], CLIP-normalised.

    Train (`augment=True`): random resized crop with area share in (crop_min_scale, 1).
    Eval: resize the shorter side and centre-crop. Crop and resize are one PIL call.
    """

    def __init__(self, image_size: int, augment: bool = False, crop_min_scale: float = 0.5) -> None:
        if not 0 < crop_min_scale <= 1:
            raise ValueError(f"crop_min_scale must be in (0, 1], got {crop_min_scale}")
        self.image_size = image_size
        self.augment = augment
        self.crop_min_scale = crop_min_scale

    @property
    def decode_side(self) -> int:
        """Smallest source side still giving full resolution for the narrowest possible crop."""
        if not self.augment:
            return self.image_size
        return math.ceil(self.image_size / math.sqrt(self.crop_min_scale * CROP_RATIO[0]))

    def pixels(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        """uint8 [3, image_size, image_size] (normalise a whole batch at once with `normalize`)."""
        width, height = image.size
        if self.augment:
            box = random_resized_crop_box(width, height, rng or random.Random(), (self.crop_min_scale, 1.0))
        else:
            box = center_square_box(width, height)
        size = (self.image_size, self.image_size)
        resized = image.resize(size, Image.Resampling.BICUBIC, box=box)
        return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1)

    def from_bytes(self, data: bytes, rng: random.Random | None = None) -> torch.Tensor:
        """uint8 [3, image_size, image_size] straight from encoded bytes (draft-mode decode)."""
        return self.pixels(decode_image(data, self.decode_side), rng)

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        return normalize(self.pixels(image, rng))
