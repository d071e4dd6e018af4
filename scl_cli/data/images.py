"""Check, decode, normalise and re-encode one image: the resizer stage of `scl prepare`.

Every source image becomes an 8-bit RGB JPEG whose shorter side is at most `size` pixels. What
cannot become one raises `ImageSkip` with a short reason that goes into the manifest:
`empty_image`, `not_an_image`, `decompression_bomb`, `truncated_image`, `corrupt_image`,
`too_small`, `unsupported_mode`.
"""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_SIZE = 384  # the paper's fine-tuning resolution; pre-training crops 288 from it
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_WHITE = (255, 255, 255)


class ImageSkip(Exception):
    """An image that cannot be used; `reason` is one of the names in the module docstring."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageSettings:
    """`size`: target shorter side (0 keeps the original size; smaller images are never enlarged);
    `quality`: JPEG quality; `max_pixels`: larger images are decompression bombs; `min_side`:
    images with a shorter side below it are skipped (icons, tracking pixels)."""

    size: int = DEFAULT_SIZE
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 10


def open_checked(data: bytes, settings: ImageSettings) -> Image.Image:
    """Open (header only) and guard against decompression bombs with PIL's own check."""
    if not data:
        raise ImageSkip("empty_image")
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, settings.max_pixels  # PIL refuses > 2x this
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageSkip("decompression_bomb", str(err)) from err
    except UnidentifiedImageError as err:
        raise ImageSkip("not_an_image") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageSkip("corrupt_image", str(err)) from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    width, height = image.size
    if width * height > settings.max_pixels:
        raise ImageSkip("decompression_bomb", f"{width}x{height} pixels")
    if min(width, height) < settings.min_side:
        raise ImageSkip("too_small", f"{width}x{height}")
    return image


def _sixteen_to_eight(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float32)
    if image.mode in _SIXTEEN_BIT or (image.mode == "I" and values.max(initial=0) > 255):
        values = values / 257.0
    elif image.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(values.round(), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16-bit and float grey are scaled (not clipped), transparency is
    composed on white, palette and CMYK are converted."""
    mode = image.mode
    if mode in (*_SIXTEEN_BIT, "I", "F"):
        return _sixteen_to_eight(image).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageSkip("unsupported_mode", mode) from err


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side `size`; unchanged when already no larger."""
    short = min(width, height)
    if size <= 0 or short <= size:
        return width, height
    scale = size / short
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode(data: bytes, settings: ImageSettings) -> Image.Image:
    """Fully decoded, upright 8-bit RGB image, shorter side at most `settings.size`."""
    image = open_checked(data, settings)
    if image.format == "JPEG" and settings.size > 0:
        image.draft("RGB", (settings.size, settings.size))  # DCT-domain reduction, keeps both sides >= size
    try:
        image.load()
    except OSError as err:
        reason = "truncated_image" if "truncat" in str(err).lower() else "corrupt_image"
        raise ImageSkip(reason, str(err)) from err
    except (SyntaxError, ValueError, EOFError, zlib.error, IndexError, TypeError) as err:
        raise ImageSkip("corrupt_image", str(err)) from err
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost the image
        pass
    image = to_rgb(image)
    target = shorter_side_size(*image.size, settings.size)
    if target != image.size:
        image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return image


def process_image(data: bytes, settings: ImageSettings) -> bytes:
    """Source bytes -> baseline RGB JPEG, or `ImageSkip`."""
    image = decode(data, settings)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=settings.quality)
    return out.getvalue()
