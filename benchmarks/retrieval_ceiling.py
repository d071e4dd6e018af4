"""The best text-to-image R@1 any model can reach on the shapes captions.

    python benchmarks/retrieval_ceiling.py [--split val] [--images 1000] [--seed 0] [--json out.json]
    python benchmarks/retrieval_ceiling.py --ckpt demo-run/tiny --data demo-run/data/shapes --split test

A caption such as "a diamond." or "a small red star in the top left corner." is true of many
images of a split, and retrieval counts only the image it was written for. A model that ranks
every image the caption is true of above every other one, in random order among them, has an
expected R@1 of 1 / (number of images it is true of) per caption. This averages that over every
caption of the first `--images` images of the split (as `scl prepare shapes` draws them; no
shards are read), per caption kind and overall. The truth of a caption for another image is
decided from the objects, not from the wording: the same multiset of objects in other cells
makes the same first three captions.

With `--ckpt` and `--data`, a checkpoint's zero-shot ITC retrieval on the same images (read from the
prepared shards, whose seed then replaces `--seed`) is set beside the ceiling, per caption kind: its
R@1, and how often its first image is one the caption is true of. The gap between the two says
whether a kind is lost to the model or to the captions.
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
from scl_cli.errors import SclError
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


def model_per_kind(ckpt: Path, dataset: Path, split: str, images: int) -> dict:
    """Zero-shot ITC text-to-image retrieval of checkpoint `ckpt` on the first `images` images of
    the prepared `split`, per caption kind: R@1 and the share whose first image the caption is true of."""
    from itertools import islice

    import torch

    from scl_cli.data.shapes import objects_from_json
    from scl_cli.data.task_batches import image_bytes, iter_split, sample_json
    from scl_cli.inference import SCL

    raw = islice(iter_split(dataset.parent, dataset.name, split), images)
    samples = [(image_bytes(sample), sample_json(sample)) for sample in raw]
    scenes = [objects_from_json(record) for _, record in samples]
    captions = [record["captions"] for _, record in samples]
    if any(len(c) != len(KINDS) for c in captions):
        raise SystemExit(f"error: {dataset}: {split} records do not hold the {len(KINDS)} shapes captions")
    model = SCL.from_pretrained(str(ckpt), device="cpu")
    with torch.inference_mode():
        image_itc = torch.cat([
            model.image_features(torch.stack([model.transform.from_bytes(j) for j, _ in samples[a : a + 64]])[:, None], with_tokens=False)[0]
            for a in range(0, len(samples), 64)
        ])  # fmt: skip
        flat = [c for caps in captions for c in caps]
        text_itc = torch.cat(
            [model.text_features(flat[a : a + 256], with_tokens=False).itc for a in range(0, len(flat), 256)]
        )
    first = (text_itc @ image_itc.T).argmax(dim=1).view(len(samples), len(KINDS)).tolist()
    truths = [_truths(objects) for objects in scenes]
    per_kind: dict[str, dict[str, float]] = {}
    for k, kind in enumerate(KINDS):
        r1 = true = 0
        for i, (objects, caps) in enumerate(zip(scenes, captions, strict=True)):
            r1 += first[i][k] == i
            true += _said(objects, caps[k], kind)(truths[first[i][k]])
        per_kind[kind] = {"r1": 100 * r1 / len(samples), "first_true": 100 * true / len(samples)}
    overall = sum(v["r1"] for v in per_kind.values()) / len(KINDS)
    return {"checkpoint": str(ckpt), "images": len(samples), "t2i_r1": overall, "per_kind": per_kind}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--ckpt", type=Path, help="also this checkpoint's zero-shot ITC R@1 per kind (needs --data)"
    )
    parser.add_argument("--data", type=Path, help="the prepared shapes folder the checkpoint is measured on")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images {args.images}: need at least 1")
    if (args.ckpt is None) != (args.data is None):
        parser.error("--ckpt and --data go together")
    try:
        return report(args)
    except SclError as err:  # a missing folder or checkpoint: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


def report(args: argparse.Namespace) -> int:
    if args.data is not None:
        from scl_cli.data.shards import read_manifest

        # the shards' own seed and size, so that the ceiling and the model see the same images
        manifest = read_manifest(args.data)
        args.seed = int(manifest["seed"])
        args.images = min(args.images, int(manifest["splits"][args.split]["samples"]))
    result = ceiling(args.seed, args.split, args.images)
    print(f"text-to-image R@1 ceiling on {args.split}[:{args.images}] ({result['captions']} captions): "
          f"{result['t2i_r1_ceiling']:.1f}")  # fmt: skip
    if args.ckpt is not None:
        result["model"] = model_per_kind(args.ckpt, args.data, args.split, args.images)
        print(f"{args.ckpt} zero-shot ITC R@1: {result['model']['t2i_r1']:.1f}")
        print(f"  {'kind':18s} {'ceiling':>7s} {'R@1':>6s} {'first image true':>17s}")
    for kind, value in result["per_kind"].items():
        if args.ckpt is None:
            print(f"  {kind:18s} {value:5.1f}")
        else:
            m = result["model"]["per_kind"][kind]
            print(f"  {kind:18s} {value:7.1f} {m['r1']:6.1f} {m['first_true']:17.1f}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
