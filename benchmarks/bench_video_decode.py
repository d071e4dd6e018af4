"""Clips decoded per second per core: decord reading `num_frames` segment frames of a clip, one crop
and resize for all of them — exactly what the loader does for a training (or evaluation) sample.

    python benchmarks/bench_video_decode.py [--clips 200] [--frames 4] [--size 224] [--source-size 320]
        [--source-frames 64] [--dir DIR]

Without --dir it writes synthetic H.264 clips (moving noise, `--source-frames` frames of
`--source-size` px, the size of a typical web clip after scaling) and times those; with --dir it
times the .mp4 files found there. One thread, one process: the figure is per core.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from scl_cli.data.transforms import ImageTransform
from scl_cli.data.video import decode_clip


def synthetic_clip(frames: int, size: int, seed: int) -> bytes:
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size * 2, size * 2, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast", "g": "25"}  # web-like: a key frame per second
        for f in range(frames):
            frame = base[f % size:f % size + size, f % size:f % size + size]
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--source-size", type=int, default=320)
    parser.add_argument("--source-frames", type=int, default=64)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.dir:
        clips = [p.read_bytes() for p in sorted(args.dir.rglob("*.mp4"))[: args.clips]]
    else:
        distinct = [synthetic_clip(args.source_frames, args.source_size, s) for s in range(min(args.clips, 20))]
        clips = [distinct[i % len(distinct)] for i in range(args.clips)]
    for augment in (True, False):
        transform = ImageTransform(args.size, augment=augment, crop_min_scale=0.5)
        times = []
        for i, data in enumerate(clips):
            start = time.perf_counter()
            decode_clip(data, args.frames, transform, random.Random(i))
            times.append(time.perf_counter() - start)
        total = sum(times)
        print(f"{'train' if augment else 'eval '}: {len(clips)} clips, {args.frames} frames at {args.size} px: "
              f"{len(clips) / total:.1f} clips/s per core (median {1000 * statistics.median(times):.1f} ms/clip)")


if __name__ == "__main__":
    main()
