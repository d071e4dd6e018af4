"""Which device a command computes on: `"auto"` is the first GPU when there is one, else the CPU."""

from __future__ import annotations

import torch


def pick_device(spec: str | torch.device = "auto") -> torch.device:
    """`"auto"`, `"cpu"`, `"cuda"`, `"cuda:1"`, ... -> a torch device."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)
