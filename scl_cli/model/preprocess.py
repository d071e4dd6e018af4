"""What the model expects of its pixels: CLIP's normalisation, applied on the model's device.

Loaders hand over uint8 pixels (a quarter of float32's bytes through worker queues and the
host-device copy); `to_model_input` normalises a whole batch where the model runs.
"""

from __future__ import annotations

import functools

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 CLIP-normalised [..., 3, H, W]."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels.float() / 255 - mean) / std


@functools.cache
def _clip_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1).to(device, non_blocking=True)
    std = torch.tensor(CLIP_STD).view(3, 1, 1).to(device, non_blocking=True)
    return mean, std


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """What the vision encoder takes: uint8 pixels [..., 3, H, W] are CLIP-normalised on their own
    device (after the cheap uint8 transfer); float images are taken as normalised already."""
    if images.dtype != torch.uint8:
        return images
    if type(images) is torch.Tensor:
        mean, std = _clip_stats(images.device)
    else:  # fake/functional tensors (estimates, tracing) must not fill the cache
        mean = torch.tensor(CLIP_MEAN, device=images.device).view(3, 1, 1)
        std = torch.tensor(CLIP_STD, device=images.device).view(3, 1, 1)
    return (images.float() / 255 - mean) / std
