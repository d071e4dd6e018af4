"""Engine of `scl bench retrieve`: how `scl index` / `scl retrieve` scale, on this machine.

For each collection size and index kind: build time, stage-1 latency of one query at a time
(median and p99 over `queries` queries, after a warm-up), and recall@10 of approximate kinds against
exact search. Then the stage-2 cost: milliseconds per re-ranked candidate (re-encoding the image and
one fusion pass) for a checkpoint, or a randomly initialised model of a recipe's size.

The vectors are synthetic unit vectors. `powerlaw` (default): Gaussian with the variance of
dimension i proportional to 1/i, normalised — a stand-in for learned embeddings, whose spectrum
decays, so neighbours are meaningful; queries are fresh draws. `uniform`: isotropic, the worst case
for any approximate index (all distances alike), reported for honesty, not as a target.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from scl_cli.errors import UsageError
from scl_cli.search.faiss_index import VectorIndex, recall_at_k

DISTRIBUTIONS = ("powerlaw", "uniform")


@dataclass
class IndexRow:
    size: int
    kind: str
    build_s: float
    params: str
    p50_ms: float
    p99_ms: float
    cpu_p50_ms: float  # CPU time of the query's thread: what the wall time is on an idle machine
    recall_at_10: float


@dataclass
class RetrieveBenchReport:
    dim: int
    distribution: str
    queries: int
    threads: int
    indexes: list[IndexRow] = field(default_factory=list)
    rerank: dict[str, float | str] = field(default_factory=dict)

    def rows(self) -> list[list[str]]:
        return [[f"{r.size:,}", r.kind, f"{r.build_s:.1f}", r.params, f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                 f"{r.cpu_p50_ms:.2f}", f"{r.recall_at_10:.3f}"] for r in self.indexes]  # fmt: skip

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def synthetic_vectors(
    n: int, dim: int, seed: int, distribution: str = "powerlaw", block: int = 100_000
) -> np.ndarray:
    """n unit vectors [n, dim] float32 (module docstring), generated `block` rows at a time."""
    if distribution not in DISTRIBUTIONS:
        raise UsageError(f"--distribution {distribution!r}: expected one of {', '.join(DISTRIBUTIONS)}")
    rng = np.random.default_rng(seed)
    scale = (
        (np.arange(1, dim + 1, dtype=np.float32) ** -0.5)
        if distribution == "powerlaw"
        else np.ones(dim, np.float32)
    )
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, block):
        x = rng.standard_normal((min(block, n - a), dim), dtype=np.float32) * scale
        out[a : a + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _latencies(
    index: VectorIndex, queries: np.ndarray, k: int = 10, warmup: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids [Q, k], wall seconds [Q], thread CPU seconds [Q]) answering one query at a time, as
    `scl retrieve` does."""
    for q in queries[:warmup]:
        index.search(q[None], k)
    ids, wall, cpu = [], [], []
    for q in queries:
        t, c = time.perf_counter(), time.thread_time()
        _, found = index.search(q[None], k)
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
        ids.append(found[0])
    return np.stack(ids), np.asarray(wall), np.asarray(cpu)


def _describe(row: IndexRow) -> str:
    return (f"{row.size:,} {row.kind} ({row.params}): build {row.build_s:.1f} s, p50 {row.p50_ms:.2f} ms, "
            f"p99 {row.p99_ms:.2f} ms, CPU p50 {row.cpu_p50_ms:.2f} ms, recall@10 {row.recall_at_10:.3f}")  # fmt: skip


def _row(n: int, kind: str, build_s: float, params: str, measured: tuple, truth: np.ndarray) -> IndexRow:
    ids, wall, cpu = measured
    return IndexRow(n, kind, build_s, params, 1e3 * float(np.median(wall)), 1e3 * float(np.percentile(wall, 99)),
                    1e3 * float(np.median(cpu)), recall_at_k(ids, truth))  # fmt: skip


def bench_indexes(
    sizes: list[int],
    dim: int = 512,
    kinds: tuple[str, ...] = ("flat", "ivf", "hnsw"),
    queries: int = 200,
    distribution: str = "powerlaw",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> RetrieveBenchReport:
    """Build and query each kind at each size; exact (flat) search is the recall reference."""
    say = progress or (lambda msg: None)
    report = RetrieveBenchReport(dim, distribution, queries, torch.get_num_threads())
    q = synthetic_vectors(queries, dim, seed + 1, distribution)
    for n in sizes:
        say(f"{n:,} x {dim} {distribution} vectors")
        base = synthetic_vectors(n, dim, seed, distribution)
        t = time.perf_counter()
        exact = VectorIndex.build(base, "flat")
        build_s = time.perf_counter() - t
        _, truth = exact.search(q, 10)  # batched: the reference, not timed
        if "flat" in kinds:
            report.indexes.append(_row(n, "flat", build_s, "exact", _latencies(exact, q), truth))
            say(_describe(report.indexes[-1]))
        del exact
        for kind in kinds:
            if kind == "flat":
                continue
            say(f"{n:,}: building {kind}")
            t = time.perf_counter()
            index = VectorIndex.build(base, kind)
            build_s = time.perf_counter() - t
            params = " ".join(f"{k}={v}" for k, v in index.params.items() if k != "tuned_recall_at_10")
            row = _row(n, kind, build_s, params, _latencies(index, q), truth)
            report.indexes.append(row)
            say(_describe(row))
            del index
        del base
    return report


@torch.no_grad()
def bench_rerank(
    ckpt: Path | None, recipe: Path | None, candidates: int = 16, repeats: int = 5
) -> dict[str, float | str]:
    """Milliseconds per re-ranked candidate: encode `candidates` images (ViT) and fuse each with
    one query, as `Retriever._rerank` does (image decoding excluded)."""
    from scl_cli.inference import SCL

    if ckpt is not None:
        scl = SCL.from_pretrained(ckpt, device="cpu")
        source = str(ckpt)
    elif recipe is not None:
        from scl_cli.config import load_recipe
        from scl_cli.model import SCLModel

        cfg = load_recipe(recipe, ['model.init="random"']).model
        scl = SCL(SCLModel(cfg, cfg.text.vocab_size or 50265, 1), device="cpu")
        source = f"{recipe} (random weights)"
    else:
        raise UsageError("pass --ckpt CHECKPOINT or --recipe RECIPE for the re-rank latency")
    model = scl.module
    cfg = model.config
    size, max_len = cfg.vision.image_size, cfg.text.max_len
    images = torch.randint(0, 256, (candidates, 1, 3, size, size), dtype=torch.uint8)
    ids = torch.randint(5, min(model.vocab_size, 1000), (1, max_len))
    mask = torch.ones(1, max_len, dtype=torch.long)
    tokens = scl.text_features((ids, mask)).tokens
    assert tokens is not None

    def once() -> tuple[float, float]:
        t0 = time.perf_counter()
        _, image_tokens = scl.image_features(images)
        t1 = time.perf_counter()
        scl.fusion_scores(
            tokens.expand(candidates, -1, -1).contiguous(), mask.expand(candidates, -1), image_tokens
        )
        return t1 - t0, time.perf_counter() - t1

    once()
    runs = [once() for _ in range(repeats)]
    encode = float(np.median([r[0] for r in runs]))
    fuse = float(np.median([r[1] for r in runs]))
    return {"model": source, "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "image_size": size, "candidates": candidates, "threads": torch.get_num_threads(),
            "ms_per_candidate": round(1e3 * (encode + fuse) / candidates, 3),
            "encode_ms_per_candidate": round(1e3 * encode / candidates, 3),
            "fuse_ms_per_candidate": round(1e3 * fuse / candidates, 3), "cpu_count": os.cpu_count() or 0}  # fmt: skip
