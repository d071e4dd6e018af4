"""Retrieval-evaluation benchmark at COCO 5k-test size: wall time and peak RSS of `two_stage_scores`.

    .venv/bin/python benchmarks/bench_retrieval_eval.py [--images 5000] [--per-image 5] [--dim 256] [--k 16]

Random unit features (E = --dim), 5 captions per image. Each mode runs in its own process so
its peak RSS (resource.getrusage ru_maxrss) is its own:
- itc:   ITC only (stage 1), chunked;
- rerank: ITC + re-ranking the top-k of every row and column with a cheap rerank function
          (dot product of a second random feature set, `--pair-batch` pairs per call);
- dense: the naive way for comparison - the full [N_i, N_t] float32 ITC matrix, then
         `retrieval_recall` on it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scl_cli.metrics import retrieval_recall  # noqa: E402
from scl_cli.search.ranking import recall_at_k_two_stage, two_stage_scores  # noqa: E402

MODES = ("itc", "rerank", "dense")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_mode(mode: str, args: argparse.Namespace) -> dict:
    gen = torch.Generator().manual_seed(0)
    n_texts = args.images * args.per_image
    text_to_image = torch.arange(args.images).repeat_interleave(args.per_image)
    images = F.normalize(torch.randn(args.images, args.dim, generator=gen), dim=-1)
    texts = F.normalize(images[text_to_image] + torch.randn(n_texts, args.dim, generator=gen), dim=-1)
    rr_images = torch.randn(args.images, args.dim, generator=gen)
    rr_texts = rr_images[text_to_image] + 2 * torch.randn(n_texts, args.dim, generator=gen)
    calls = 0

    def rerank(image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return (rr_images[image_idx] * rr_texts[text_idx]).sum(-1)

    base_rss = peak_rss_mib()
    start = time.perf_counter()
    if mode == "dense":
        recall = retrieval_recall(images @ texts.T, text_to_image)
        pairs = 0
    else:
        scores = two_stage_scores(
            images,
            texts,
            rerank if mode == "rerank" else None,
            k=args.k if mode == "rerank" else None,
            chunk=args.chunk,
            pair_batch=args.pair_batch,
        )
        recall = recall_at_k_two_stage(scores, text_to_image)
        pairs = scores.pairs_scored
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(peak_rss_mib()),
        "rss_before_mib": round(base_rss),
        "pairs_reranked": pairs,
        "rerank_calls": calls,
        "r_mean": round(recall["r_mean"], 3),
        "tr_r1": round(recall["tr_r1"], 3),
        "ir_r1": round(recall["ir_r1"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--pair-batch", type=int, default=256)
    parser.add_argument("--mode", choices=(*MODES, "all"), default="all")
    args = parser.parse_args()

    if args.mode != "all":
        print(json.dumps(run_mode(args.mode, args)))
        return
    print(
        f"{args.images} images x {args.images * args.per_image} texts, E={args.dim}, k={args.k}, "
        f"chunk={args.chunk}, pair_batch={args.pair_batch}, torch threads={torch.get_num_threads()}"
    )
    forwarded = [
        f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items() if name != "mode"
    ]
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, __file__, *forwarded, "--mode", mode], capture_output=True, text=True, check=True
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{mode:7s} {result['seconds']:7.2f} s  peak RSS {result['peak_rss_mib']:5d} MiB "
            f"(before: {result['rss_before_mib']} MiB)  pairs reranked {result['pairs_reranked']:>7d} "
            f"in {result['rerank_calls']} calls  R@1 t2i {result['ir_r1']:.2f} i2t {result['tr_r1']:.2f} "
            f"rsum-mean {result['r_mean']:.2f}"
        )


if __name__ == "__main__":
    main()
