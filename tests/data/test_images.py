"""The image stage: every unusable image has its reason; awkward modes become RGB JPEGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from scl_cli.data.images import ImageSettings, ImageSkip, process_image, shorter_side_size

from .realdata import bad_images, jpeg, odd_images

SETTINGS = ImageSettings(size=32)


@pytest.mark.parametrize("reason", sorted(bad_images()))
def test_bad_images_are_skipped_with_their_reason(reason: str) -> None:
    with pytest.raises(ImageSkip) as caught:
        process_image(bad_images()[reason], SETTINGS)
    assert caught.value.reason == reason


@pytest.mark.parametrize("kind", sorted(odd_images()))
def test_odd_modes_become_rgb_jpegs(kind: str) -> None:
    image = Image.open(io.BytesIO(process_image(odd_images()[kind], SETTINGS)))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (43, 32))
    assert 20 < np.asarray(image).mean() < 235  # not blown out to white or black


def test_limits_and_sizes() -> None:
    small = ImageSettings(size=32, max_pixels=64 * 48 - 1)
    with pytest.raises(ImageSkip, match="decompression_bomb"):
        process_image(jpeg(1), small)  # over a lowered MAX_IMAGE_PIXELS
    with pytest.raises(ImageSkip, match="too_small"):
        process_image(jpeg(1, 8, 8), SETTINGS)
    assert Image.open(io.BytesIO(process_image(jpeg(1, 20, 30), SETTINGS))).size == (20, 30)  # never enlarged
    assert shorter_side_size(4000, 3000, 384) == (512, 384) and shorter_side_size(300, 200, 0) == (300, 200)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored landscape, shown portrait
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "JPEG", exif=exif)
    assert Image.open(io.BytesIO(process_image(out.getvalue(), SETTINGS))).size == (32, 43)
