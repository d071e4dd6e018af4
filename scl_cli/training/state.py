"""The resumable part of a run besides the weights: optimiser, scheduler and RNG states and the
data position, kept to tensors and plain values so that it loads with `weights_only=True`."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def build_training_state(
    optimizer: torch.optim.Optimizer, scheduler: Any, micro_batches_consumed: int, **extra: Any
) -> dict[str, Any]:
    """The resumable part of a run: optimiser, scheduler, RNG states and the data position."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": capture_rng_state(),
        "data_position": int(micro_batches_consumed),
        **extra,
    }


def restore_training_state(
    training_state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any
) -> int:
    """Restore what `build_training_state` saved; returns the micro-batches consumed so far."""
    optimizer.load_state_dict(training_state["optimizer"])
    if scheduler is not None and training_state.get("scheduler") is not None:
        scheduler.load_state_dict(training_state["scheduler"])
    restore_rng_state(training_state["rng"])
    return int(training_state["data_position"])


def capture_rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy, torch CPU and every CUDA device, as tensors and lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        # int64: torch has no full uint32 support, and the values fit.
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`; CUDA states are restored for the devices present in both."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
