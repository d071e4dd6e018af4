"""Flickr30K with the Karpathy split (`dataset_flickr30k.json` + `flickr30k-images/`).

`--source ROOT` where ROOT holds `flickr30k-images/` and `dataset_flickr30k.json` (directly or
under `karpathy/`, ...). Splits: train (29,000), val (1,014), test (1,000); 5 captions per image.
ViLT trains on train + val; pass `--split` as needed. One sample per image:
`{"id", "image_id" (the Flickr id in the file name), "filename", "captions", "sentids", "karpathy_split"}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scl_cli.data.sources.base import SourceData, SourceRequest, find_dir, unique_paths
from scl_cli.data.sources.karpathy import read_karpathy

EXPECTED = "ROOT with dataset_flickr30k.json (or karpathy/dataset_flickr30k.json) and flickr30k-images/"


def _image_id(entry: dict) -> int | str:
    stem = Path(entry["filename"]).stem
    return int(stem) if stem.isdigit() else entry.get("imgid", stem)


def _image_dirs(roots: Sequence[Path], filepath: str) -> list[Path]:
    found = find_dir(roots, ["flickr30k-images", "flickr30k_images", "images"])
    return unique_paths([*found, *(r for r in roots if r.is_dir())])


def read(request: SourceRequest) -> SourceData:
    return read_karpathy(request, "f30k", "dataset_flickr30k.json", _image_dirs, _image_id, EXPECTED)
