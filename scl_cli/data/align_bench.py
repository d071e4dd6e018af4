"""ALIGN-BENCH as released with the SCL code (IIGROUP/SCL `align_*.py`): `images/N.jpg` and
`pkls/N.pkl`, each pickle a dict `{"caption": str, "annotation": {phrase: [{"bbox_mask": [x1, y1,
x2, y2], "pixel_mask": bool array [H, W]}, ...]}}`.

The pickles are read by a restricted unpickler that builds only dicts, lists, tuples, strings,
numbers and numpy arrays; any other class is refused in one line (unpickling can run code)."""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scl_cli.errors import DataError

# What numpy arrays and scalars need to be rebuilt (numpy 1 and 2 module names); nothing else.
_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArraysOnly(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY:
            return super().find_class(module, name)
        raise DataError(
            f"{self.path}: holds a {module}.{name}, which scl does not unpickle (only dicts, lists, "
            "strings, numbers and numpy arrays)"
        )


def read_pickle(path: Path) -> Any:
    try:
        return _ArraysOnly(Path(path).read_bytes(), Path(path)).load()
    except DataError:
        raise
    except Exception as err:  # a truncated or foreign file
        raise DataError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None


@dataclass
class Region:
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in image pixels (as int() of the release's floats)
    pixels: np.ndarray  # bool [H, W]


@dataclass
class AlignSample:
    key: str
    image: Path | bytes  # a file, or the encoded image itself (shapes, read from its shard)
    caption: str
    regions: dict[str, list[Region]]  # phrase (lower-case words) -> its annotated regions


def _regions(raw: Any, path: Path) -> dict[str, list[Region]]:
    if not isinstance(raw, dict):
        raise DataError(f"{path}: 'annotation' is a {type(raw).__name__}, expected a dict phrase -> regions")
    out: dict[str, list[Region]] = {}
    for phrase, boxes in raw.items():
        if not isinstance(phrase, str) or not isinstance(boxes, list | tuple):
            raise DataError(f"{path}: annotation {phrase!r} is not a phrase with a list of regions")
        regions = []
        for box in boxes:
            try:
                x1, y1, x2, y2 = (int(v) for v in box["bbox_mask"])
                pixels = np.asarray(box["pixel_mask"]).astype(bool)
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(f"{path}: region of {phrase!r} lacks bbox_mask/pixel_mask ({err})") from None
            if pixels.ndim != 2:
                raise DataError(f"{path}: pixel_mask of {phrase!r} is not a 2-D mask")
            regions.append(Region((x1, y1, x2, y2), pixels))
        out[phrase] = regions
    return out


def read_sample(pkl: Path, images: Path) -> AlignSample:
    record = read_pickle(pkl)
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("caption"), str)
        or "annotation" not in record
    ):
        raise DataError(f"{pkl}: expected a dict with 'caption' and 'annotation'")
    image = images / f"{pkl.stem}.jpg"
    if not image.is_file():
        raise DataError(f"{image}: missing (ALIGN-BENCH pairs images/N.jpg with pkls/N.pkl)")
    return AlignSample(pkl.stem, image, record["caption"], _regions(record["annotation"], pkl))


def is_align_bench(folder: Path) -> bool:
    return (Path(folder) / "pkls").is_dir() and (Path(folder) / "images").is_dir()


def iter_align_bench(folder: Path, limit: int | None = None) -> Iterator[AlignSample]:
    """The samples of an ALIGN-BENCH folder, in numeric order of their file names."""
    folder = Path(folder)
    if not is_align_bench(folder):
        raise DataError(
            f"{folder}: not an ALIGN-BENCH folder (expected images/ and pkls/) nor a prepared shapes data set"
        )
    pkls = sorted(
        folder.glob("pkls/*.pkl"),
        key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.stem),
    )
    for pkl in pkls[:limit]:
        yield read_sample(pkl, folder / "images")
