"""Fixtures of the data tests: one tiny shapes data set, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from scl_cli.engines.prepare import prepare_shapes

TINY = {"images": 40, "seed": 0, "image_size": 64, "shard_size": 10}  # train 32 (4 shards), val 4, test 4


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding `shapes/` made with TINY."""
    root = tmp_path_factory.mktemp("tiny-data")
    prepare_shapes(root, workers=1, **TINY)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tiny_root: Path) -> Path:
    return tiny_root / "shapes"
