"""Classification accuracy (NLVR2: is the sentence true of the image pair)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def accuracy(pred: Sequence | np.ndarray | Tensor, labels: Sequence | np.ndarray | Tensor) -> float:
    """Percent of predictions equal to their label.

    pred: [N] predicted labels (bool or int), or [N, C] scores / logits (the arg-max is taken).
    labels: [N] true labels (bool or int; NLVR2's "True"/"False" strings must be converted first).
    """
    p = torch.as_tensor(np.asarray(pred) if not isinstance(pred, Tensor) else pred).detach().cpu()
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).detach().cpu()
    if y.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(y.shape)}")
    if p.dim() == 2:
        p = p.argmax(dim=1)
    if p.shape != y.shape:
        raise ValueError(f"{p.shape[0] if p.dim() else 0} predictions for {y.shape[0]} labels")
    if y.numel() == 0:
        raise ValueError("accuracy of no examples is undefined")
    if p.is_floating_point() or y.is_floating_point():
        raise ValueError(
            "predictions and labels must be class indices or booleans (pass [N, C] scores for arg-max)"
        )
    return 100 * (p.long() == y.long()).double().mean().item()
