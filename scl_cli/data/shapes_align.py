"""ALIGN-BENCH-style samples from a prepared `shapes` data set: what `scl align --data DIR/shapes`
scores.

Each image of a split gets the caption naming every object ("a picture of a large red circle and
two small blue squares.") and, per object phrase of that caption ("large red circle", "small blue
squares"), the box and pixel mask of its objects. The masks are not stored in the shards: the
scene is drawn again from the generator's seed (`manifest.json`), checked against the objects the
shard recorded, and each object painted alone (`shapes.object_masks`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from scl_cli.data.align_bench import AlignSample, Region
from scl_cli.data.shapes import (
    block_palette,
    describe,
    object_masks,
    objects_from_json,
    sample_scene,
    scene_rng,
)
from scl_cli.data.shards import iter_tar_samples, read_manifest
from scl_cli.errors import DataError


def is_shapes(folder: Path) -> bool:
    manifest = Path(folder) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("name") == "shapes"
    except (OSError, ValueError):
        return False


def _phrase(objs: list) -> str:
    o = objs[0]
    return f"{o.size} {o.color} {o.shape}{'s' if len(objs) > 1 else ''}"


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def shapes_align_sample(record: dict, jpeg: bytes, seed: int, image_size: int) -> AlignSample:
    """One shard sample (its JSON record and JPEG) as an ALIGN sample; refuses a record the
    generator does not reproduce (data prepared by another version of `scl prepare shapes`)."""
    key = record["id"]
    split, _, number = key.rpartition("-")
    scene = sample_scene(scene_rng(seed, split, int(number)), block_palette(seed, split, int(number)))
    objects = objects_from_json(record)
    if list(scene.objects) != objects:
        raise DataError(
            f"{key}: the shapes generator draws other objects than the shard holds — prepared by another "
            "version of `scl prepare shapes`; prepare it again for `scl align`"
        )
    masks = object_masks(scene, image_size)
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, o in enumerate(objects):
        groups.setdefault((o.size, o.color, o.shape), []).append(i)
    regions = {
        _phrase([objects[i] for i in members]): [Region(_box(masks[i]), masks[i]) for i in members]
        for members in groups.values()
    }
    return AlignSample(key, jpeg, f"a picture of {describe(objects)}.", regions)


def iter_shapes_align(dataset: Path, split: str = "test", limit: int | None = None) -> Iterator[AlignSample]:
    """The images of `split` of a prepared shapes data set (DIR/shapes), as ALIGN samples."""
    dataset = Path(dataset)
    manifest = read_manifest(dataset)
    if split not in manifest.get("splits", {}):
        raise DataError(f"{dataset}/manifest.json: no split {split!r} (has {', '.join(manifest['splits'])})")
    seed, size = int(manifest["seed"]), int(manifest["image_size"])
    count = 0
    for shard in manifest["splits"][split]["shards"]:
        for sample in iter_tar_samples(dataset / shard["file"]):
            if limit is not None and count >= limit:
                return
            yield shapes_align_sample(json.loads(sample["json"]), sample["jpg"], seed, size)
            count += 1
