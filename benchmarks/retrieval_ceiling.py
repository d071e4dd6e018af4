"""The best text-to-image R@1 any model can reach on the shapes captions.

    python benchmarks/retrieval_ceiling.py [--split val] [--images 1000] [--seed 0] [--json out.json]

A caption such as "a diamond." or "a small red star in the top left corner." is true of many
images of a split, and retrieval counts only the image it was written for. A model that ranks
every image the caption is true of above every other one, in random order among them, has an
expected R@1 of 1 / (number of images it is true of) per caption. This averages that over every
caption of the first `--images` images of the split (as `scl prepare shapes` draws them; no
shards are read), per caption kind and overall. The truth of a caption for another image is
decided from the objects, not from the wording: the same multiset of objects in other cells
makes the same first three captions.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from scl_cli.data.shapes import (  # the captions' own wording, so the phrases match exactly
    RELATIONS,
    ShapeObject,
    block_palette,
    holds,
    make_captions,
    place_caption,
    relation_phrase,
    sample_scene,
    scene_rng,
)
from scl_cli.io.atomic import atomic_write_json

KINDS = ("full", "count_and_plain", "shapes_only", "relation_or_only", "place")
Objects = Sequence[ShapeObject]


def _key(o: ShapeObject) -> tuple[str, str, str]:
    return (o.size, o.color, o.shape)


def _pairs(objects: Objects) -> set[tuple]:
    return {
        (_key(a), r, _key(b))
        for a in objects
        for b in objects
        for r in RELATIONS
        if a is not b and holds(a, r, b)
    }


def _truths(objects: Objects) -> dict[str, object]:
    """What each caption kind of `make_captions` can say about a scene, in a comparable form."""
    return {
        "full": Counter(_key(o) for o in objects),
        "count_and_plain": Counter((o.color, o.shape) for o in objects),
        "shapes_only": Counter(o.shape for o in objects),
        "relation_or_only": _pairs(objects),
        "place": {(_key(o), o.row, o.col) for o in objects},
    }


def _said(objects: Objects, caption: str, kind: str) -> Callable[[dict], bool]:
    """Which images (by their `_truths`) caption `caption` of kind `kind`, written for `objects`, is true of."""
    mine = _truths(objects)
    if kind in ("full", "count_and_plain", "shapes_only"):
        return lambda t: t[kind] == mine[kind]
    if kind == "relation_or_only":
        if caption.startswith(("only ", "just ")):  # a single object, and nothing else
            return lambda t: t["full"] == mine["full"]
        said = {(_key(a), r, _key(b)) for a in objects for b in objects for r in RELATIONS
                if a is not b and f"{relation_phrase(a, r, b)}." == caption}  # fmt: skip
        return lambda t: bool(said & t["relation_or_only"])
    said = {(_key(o), o.row, o.col) for o in objects if place_caption(o) == caption}
    return lambda t: bool(said & t["place"])


def ceiling(seed: int, split: str, images: int) -> dict:
    scenes, captions = [], []
    for index in range(images):
        rng = scene_rng(seed, split, index)
        scene = sample_scene(rng, block_palette(seed, split, index))
        scenes.append(scene.objects)
        captions.append(make_captions(scene.objects, rng))
    truths = [_truths(objects) for objects in scenes]
    per_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    for objects, caps in zip(scenes, captions, strict=True):
        for kind, caption in zip(KINDS, caps, strict=True):
            true_of = _said(objects, caption, kind)
            n = sum(map(true_of, truths))
            if n < 1:  # its own image at least: anything else is a misread caption
                raise AssertionError(f"{kind} caption {caption!r} is true of no image, not even its own")
            per_kind[kind].append(1.0 / n)
    every = [v for values in per_kind.values() for v in values]
    return {
        "split": split, "images": images, "captions": len(every),
        "t2i_r1_ceiling": 100 * sum(every) / len(every),
        "per_kind": {k: 100 * sum(v) / len(v) for k, v in per_kind.items()},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images {args.images}: need at least 1")
    result = ceiling(args.seed, args.split, args.images)
    print(f"text-to-image R@1 ceiling on {args.split}[:{args.images}] ({result['captions']} captions): "
          f"{result['t2i_r1_ceiling']:.1f}")  # fmt: skip
    for kind, value in result["per_kind"].items():
        print(f"  {kind:18s} {value:5.1f}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
