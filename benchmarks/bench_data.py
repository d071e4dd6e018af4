"""Data benchmark: `scl prepare` throughput and decode + resize + batch throughput from shards.

    .venv/bin/python benchmarks/bench_data.py [--images 192] [--source-size 1280x960] [--keep DIR]

1. Builds a COCO-layout source (Karpathy JSON + `train2014/` JPEGs of photo-like noise at
   `--source-size`), then times `prepare("coco")` at the default 384 px with 1 and 2 workers.
2. Times one process (one torch thread: "per core") turning shard samples into normalised
   batches [32, 1, 3, 288, 288]: the pre-training transform (random resized crop) and the eval
   transform (resize + centre crop), from 384 px shards and from full-size shards, with and
   without JPEG draft-mode decoding.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scl_cli.data.shards import iter_tar_samples, read_manifest  # noqa: E402
from scl_cli.data.transforms import ImageTransform, decode_image  # noqa: E402
from scl_cli.engines.prepare import prepare  # noqa: E402
from scl_cli.model.preprocess import normalize  # noqa: E402

BATCH = 32
SIZE = 288


def photo(seed: int, width: int, height: int) -> bytes:
    """A JPEG with photo-like statistics: smooth shapes plus fine noise (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    base = np.asarray(
        Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16
    )
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, "JPEG", quality=90)
    return out.getvalue()


def make_source(root: Path, n: int, width: int, height: int) -> None:
    (root / "train2014").mkdir(parents=True)
    images = []
    for i in range(n):
        name = f"COCO_train2014_{i:012d}.jpg"
        (root / "train2014" / name).write_bytes(photo(i, width, height))
        sentences = [
            {"raw": f"photo {i} caption {k}", "tokens": [], "imgid": i, "sentid": 5 * i + k} for k in range(5)
        ]
        images.append({"filepath": "train2014", "filename": name, "imgid": i, "split": "train",
                       "sentences": sentences, "sentids": [5 * i + k for k in range(5)], "cocoid": i})  # fmt: skip
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))


def time_prepare(source: Path, out: Path, workers: int, image_size: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    summary = prepare("coco", out, source=[source], workers=workers, image_size=image_size, shard_size=32)
    return summary.written / summary.seconds


def shard_bytes(dataset: Path) -> list[bytes]:
    manifest = read_manifest(dataset)
    return [
        s["jpg"]
        for shard in manifest["splits"]["train"]["shards"]
        for s in iter_tar_samples(dataset / shard["file"])
    ]


def time_batches(images: list[bytes], augment: bool, draft: bool, seconds: float = 1.5) -> float:
    """Images/s of one thread building normalised batches [B, 1, 3, 288, 288]."""
    transform = ImageTransform(SIZE, augment=augment)
    rng = random.Random(0)
    done, started, i = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        pixels = []
        for _ in range(BATCH):
            data = images[i % len(images)]
            i += 1
            image = decode_image(data, transform.decode_side if draft else None)
            pixels.append(transform.pixels(image, rng))
        batch = normalize(torch.stack(pixels)).unsqueeze(1)
        assert batch.shape == (BATCH, 1, 3, SIZE, SIZE)
        done += BATCH
    return done / (time.perf_counter() - started)


def best_of(rounds: int, images: list[bytes], augment: bool) -> tuple[float, float]:
    """(no draft, draft) images/s: the best of `rounds` alternating runs (robust to other load)."""
    time_batches(images, augment, draft=False, seconds=0.3)  # warm-up
    plain = drafted = 0.0
    for _ in range(rounds):
        plain = max(plain, time_batches(images, augment, draft=False))
        drafted = max(drafted, time_batches(images, augment, draft=True))
    return plain, drafted


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--source-size", default="1280x960")
    parser.add_argument("--keep", type=Path, default=None, help="Work folder to keep (default: a temp dir).")
    args = parser.parse_args()
    width, height = (int(v) for v in args.source_size.split("x"))
    torch.set_num_threads(1)
    work = args.keep or Path(tempfile.mkdtemp(prefix="scl-bench-data-"))
    try:
        make_source(work / "src", args.images, width, height)
        rows = [("cpu cores", os.cpu_count()), ("source images", f"{args.images} x {width}x{height} JPEG")]
        for workers in (1, 2):
            rate = max(time_prepare(work / "src", work / f"out{workers}", workers, 384) for _ in range(2))
            rows.append(
                (
                    f"prepare coco -> 384 px, {workers} worker(s)",
                    f"{rate:.1f} images/s ({rate / workers:.1f}/core)",
                )
            )
        time_prepare(work / "src", work / "full", 1, 0)
        small, full = shard_bytes(work / "out1" / "coco"), shard_bytes(work / "full" / "coco")
        for label, images in (("384 px shards", small), (f"{width}x{height} shards", full)):
            for augment in (True, False):
                kind = "train crop" if augment else "eval resize"
                plain, drafted = best_of(3, images, augment)
                rows.append((f"{label}, {kind} -> {SIZE}, no draft", f"{plain:.1f} images/s/core"))
                rows.append(
                    (
                        f"{label}, {kind} -> {SIZE}, draft",
                        f"{drafted:.1f} images/s/core ({drafted / plain:.2f}x)",
                    )
                )
        width_col = max(len(r[0]) for r in rows)
        for name, value in rows:
            print(f"{name.ljust(width_col)}  {value}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
