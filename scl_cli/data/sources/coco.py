"""COCO Captions with the Karpathy split (`dataset_coco.json` + `train2014/`, `val2014/`).

`--source ROOT` where ROOT holds `train2014/`, `val2014/` and `dataset_coco.json` (directly or
under `karpathy/`, `annotations/`, `caption_datasets/`); several --source paths may split these
up. Splits: train (Karpathy train + restval, 113,287 images), val (5,000), test (5,000). One
sample per image: `{"id", "image_id" (= cocoid), "filename", "captions", "sentids", "karpathy_split"}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scl_cli.data.sources.base import SourceData, SourceRequest, find_dir, unique_paths
from scl_cli.data.sources.karpathy import read_karpathy

EXPECTED = "ROOT with dataset_coco.json (or karpathy/dataset_coco.json), train2014/ and val2014/"


def _image_dirs(roots: Sequence[Path], filepath: str) -> list[Path]:
    named = find_dir(roots, [filepath]) if filepath else []
    return unique_paths(
        [*named, *find_dir(roots, ["train2014", "val2014"]), *(r for r in roots if r.is_dir())]
    )


def _image_id(entry: dict) -> int | str:
    if "cocoid" in entry:
        return entry["cocoid"]
    digits = Path(entry["filename"]).stem.split("_")[-1]
    return int(digits) if digits.isdigit() else entry["filename"]


def read(request: SourceRequest) -> SourceData:
    return read_karpathy(request, "coco", "dataset_coco.json", _image_dirs, _image_id, EXPECTED)
