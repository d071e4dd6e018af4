"""NLVR2 accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scl_cli.metrics import accuracy


def test_accuracy_from_labels_and_logits() -> None:
    assert accuracy([True, False, True, True], [True, True, True, False]) == 50.0
    assert accuracy(np.array([1, 0, 1]), torch.tensor([1, 0, 0])) == pytest.approx(200 / 3)
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])  # arg-max 1, 0, 1
    assert accuracy(logits, [1, 0, 0]) == pytest.approx(200 / 3)


def test_accuracy_bad_inputs() -> None:
    with pytest.raises(ValueError, match="predictions for"):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="no examples"):
        accuracy([], [])
    with pytest.raises(ValueError, match="class indices"):
        accuracy([0.7, 0.2], [1, 0])
