"""What the inference API accepts as an image, turned into the model's uint8 pixels [T, 3, S, S].

An image is a file path (str or Path; videos and animated GIF/WebP too: `frames` frames spread over
the clip), encoded bytes (an upload), a PIL image, a numpy array ([H, W], [H, W, 3|4] or a clip
[T, H, W, 3]) or a tensor ([3, H, W] or a clip [T, 3, H, W]). Arrays and tensors hold uint8 pixels
or floats in [0, 1]. Everything goes through the same resize-and-centre-crop as evaluation
(`data.transforms.ImageTransform`), so a file and the PIL image read from it give the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from scl_cli.data.media import MediaError, decode_media, load_file
from scl_cli.data.transforms import ImageTransform
from scl_cli.errors import UsageError

ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray, torch.Tensor]  # noqa: UP007 (a runtime alias)


class InputError(UsageError):
    """An input the model cannot take (unreadable file, wrong shape, empty text); one line."""


def _describe(item: Any) -> str:
    if isinstance(item, str | Path):
        return f"image {str(item)!r}"
    if isinstance(item, bytes):
        return f"image ({len(item)} bytes)"
    return f"image of type {type(item).__name__}"


def _frames_from_array(array: np.ndarray, where: str) -> list[Image.Image]:
    """[H, W], [H, W, C] or [T, H, W, C] (uint8, or float in [0, 1]) -> PIL frames."""
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"{where}: pixels of dtype {array.dtype}; expected uint8 or floats in [0, 1]")
        if np.issubdtype(array.dtype, np.floating):
            array = np.clip(array, 0.0, 1.0) * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
        raise InputError(
            f"{where}: array of shape {tuple(array.shape)}; expected [H, W], [H, W, 3] or [T, H, W, 3]"
        )
    frames = []
    for frame in array:
        if frame.shape[-1] == 1:
            frame = np.repeat(frame, 3, axis=-1)
        frames.append(Image.fromarray(np.ascontiguousarray(frame[..., :3])))
    return frames


def _tensor_to_array(tensor: torch.Tensor, where: str) -> np.ndarray:
    """[3, H, W] / [T, 3, H, W] -> numpy [T, H, W, 3] (channels last, as `_frames_from_array` takes)."""
    t = tensor.detach().cpu()
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[1] not in (1, 3):
        raise InputError(
            f"{where}: tensor of shape {tuple(tensor.shape)}; expected [3, H, W] or [T, 3, H, W]"
        )
    if t.dtype != torch.uint8:
        t = t.float()
    return t.permute(0, 2, 3, 1).numpy()


def to_pixels(item: ImageInput, transform: ImageTransform, frames: int = 1) -> torch.Tensor:
    """One image or clip -> uint8 [T, 3, S, S] (S = the transform's size; T = 1 for an image,
    at most `frames` for a video). `InputError` naming the input when it cannot be read."""
    where = _describe(item)
    try:
        if isinstance(item, str | Path):
            return load_file(Path(item), transform, frames)
        if isinstance(item, bytes | bytearray | memoryview):
            return decode_media(bytes(item), "", transform, frames)
    except MediaError as err:
        raise InputError(f"{where}: {err}") from None
    if isinstance(item, Image.Image):
        return transform.pixels(item.convert("RGB")).unsqueeze(0)
    if isinstance(item, torch.Tensor):
        item = _tensor_to_array(item, where)
    if isinstance(item, np.ndarray):
        images = _frames_from_array(item, where)
        if len(images) > frames:
            images = [images[int((i + 0.5) * len(images) / frames)] for i in range(frames)]
        return torch.stack([transform.pixels(image) for image in images])
    raise InputError(f"{where}: expected a path, bytes, a PIL image, a numpy array or a tensor")


def check_texts(texts: Sequence[str], what: str = "text") -> list[str]:
    """Non-empty strings, or an `InputError` naming the first bad one."""
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{what} {i}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f"{what} {i}: empty")
        out.append(text)
    return out
