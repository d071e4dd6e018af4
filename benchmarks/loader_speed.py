"""Decoded and augmented images per second per CPU core, from shards, at the pre-training size.

    .venv/bin/python benchmarks/loader_speed.py [--images 256] [--size 288] [--json out.json]

Writes `--images` photo-like 640x480 JPEGs (smooth colour fields, edges and noise, ~quality 90,
about the bytes per pixel of COCO photos) with captions into shards under a temporary data root,
then measures, on one core (one process, one torch thread):

- `raw_decode_resize`: Pillow decode + bicubic resize to size x size, nothing else (the floor);
- `transform`: scl's `ImageTransform.from_bytes` (draft decode, random resized crop in one resize);
- `loader`: the whole pre-training loader with `num_workers=0` — tar reading, caption choice,
  tokenizing, decode, crop, collation into a uint8 batch — as one worker process runs it.

All three are images per second of one core; a loader worker is one process, so `data.num_workers`
workers give about that many times `loader`.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scl_cli.data.shards import ShardWriter, write_manifest
from scl_cli.data.stream import build_train_loader
from scl_cli.data.tokenizer import train_bpe_tokenizer
from scl_cli.data.transforms import ImageTransform
from scl_cli.io.atomic import atomic_write_json

WORDS = (
    "a man woman dog cat red blue green small large sitting on the next to a table street car tree".split()
)


def photo_like(rng: np.random.Generator, width: int = 640, height: int = 480) -> bytes:
    """A JPEG with the structure of a photo: smooth shading, a few sharp shapes, sensor noise."""
    coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image).astype(np.int16)
    for _ in range(6):
        x0, y0 = rng.integers(0, width - 80), rng.integers(0, height - 80)
        pixels[y0 : y0 + rng.integers(20, 200), x0 : x0 + rng.integers(20, 200)] = rng.integers(0, 255, 3)
    pixels += rng.normal(0, 14, pixels.shape).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def make_dataset(root: Path, images: int, shards: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    words = random.Random(seed)
    captions = [[" ".join(words.choices(WORDS, k=10)) for _ in range(5)] for _ in range(images)]
    dataset = root / "photos"
    writer = ShardWriter(dataset / "train", shard_size=-(-images // shards), relative_to=dataset)
    with writer:
        for i in range(images):
            writer.write({"__key__": f"train-{i:06d}", "jpg": photo_like(rng),
                          "json": json.dumps({"captions": captions[i]})})  # fmt: skip
    total = sum(s["samples"] for s in writer.shards)
    write_manifest(
        dataset,
        {"name": "photos", "version": 1, "splits": {"train": {"samples": total, "shards": writer.shards}}},
    )
    train_bpe_tokenizer([c for cs in captions for c in cs], vocab_size=300).save(dataset / "tokenizer.json")


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dataset(root, args.images, shards=4)
        from scl_cli.data.shards import iter_tar_samples

        blobs = [
            s["jpg"] for p in sorted((root / "photos" / "train").glob("*.tar")) for s in iter_tar_samples(p)
        ]

        def raw(n: int) -> None:
            for i in range(n):
                Image.open(io.BytesIO(blobs[i % len(blobs)])).convert("RGB").resize(
                    (args.size, args.size), Image.Resampling.BICUBIC
                )

        transform = ImageTransform(args.size, augment=True, crop_min_scale=0.5)

        def transformed(n: int) -> None:
            rng = random.Random(0)
            for i in range(n):
                transform.from_bytes(blobs[i % len(blobs)], rng)

        from scl_cli.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer("dataset", root, "photos")
        loader = build_train_loader(
            data_root=root, datasets=["photos"], weights=None, split="train", tokenizer=tokenizer,
            image_size=args.size, max_len=50, batch_size=args.batch, seed=0, num_workers=0,
            shuffle_buffer=1000,
        )  # fmt: skip
        batches = iter(loader)

        def loaded(n: int) -> None:
            for _ in range(n // args.batch):
                next(batches)

        raw(16), transformed(16)  # warm caches
        report = {
            "image_size": args.size,
            "source": "640x480 JPEG, quality 90",
            "mean_jpeg_kb": round(sum(map(len, blobs)) / len(blobs) / 1024, 1),
            "raw_decode_resize_per_core": round(rate(raw, args.images), 1),
            "transform_per_core": round(rate(transformed, args.images), 1),
            "loader_per_core": round(rate(loaded, args.images - args.images % args.batch), 1),
        }
    json.dump(report, sys.stdout, indent=2)
    print()
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
