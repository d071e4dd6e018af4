"""Inner-product vector search over unit-length ITC features, with faiss.

Kinds (`--kind`):
- `flat`: exact search (`IndexFlatIP`); the default below `AUTO_FLAT_MAX` vectors.
- `ivf`: inverted lists (`IndexIVFFlat`, inner product) with about sqrt(N) lists; the default from
  `AUTO_FLAT_MAX` on. It trains in seconds on a few cores, takes appended vectors without a rebuild
  and, on the synthetic benchmark (`scl bench retrieve`), answers a query at 1M vectors in a few ms.
- `hnsw`: a graph (`IndexHNSWFlat`, M=16, efConstruction=40): no training, slower to build on few
  cores (minutes per million vectors).

An approximate index is tuned after every build or append: `tune` sets the smallest `nprobe`
(ivf) or `efSearch` (hnsw) whose recall@10 against exact search reaches `TARGET_RECALL` on 200
calibration queries, the normalised midpoints of random pairs of indexed vectors: they lie between
stored points, not on them, and came out slightly harder than fresh queries from the same
distribution on every setting we measured (indexed vectors themselves as queries are too easy: the
graph or list that holds them is always found). The values are stored with the index (`params`)
and reapplied when it is loaded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from scl_cli.errors import UsageError

KINDS = ("auto", "flat", "ivf", "hnsw")
AUTO_FLAT_MAX = 50_000
TARGET_RECALL = 0.95
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 40
IVF_TRAIN_PER_LIST = 64  # training vectors per list (faiss warns below 39)
TUNE_QUERIES = 200


def choose_kind(count: int, requested: str = "auto") -> str:
    """The kind an index of `count` vectors gets: `requested`, or for "auto" flat below
    `AUTO_FLAT_MAX` and ivf from there on."""
    if requested not in KINDS:
        raise UsageError(f"--kind {requested!r}: expected one of {', '.join(KINDS)}")
    if requested != "auto":
        return requested
    return "flat" if count < AUTO_FLAT_MAX else "ivf"


def ivf_lists(count: int) -> int:
    """Number of inverted lists: the power of two nearest sqrt(count), with at least
    `IVF_TRAIN_PER_LIST` training vectors per list."""
    nlist = 2 ** round(math.log2(max(math.sqrt(max(count, 1)), 1)))
    return int(max(1, min(nlist, count // IVF_TRAIN_PER_LIST, 65536)))


def _as_matrix(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"vectors must be [N, {dim or 'E'}] float32; got {tuple(x.shape)}")
    return x


class VectorIndex:
    """A faiss index over unit vectors [N, E] (inner product = cosine), ids 0..N-1 in insertion order."""

    def __init__(self, index: faiss.Index, kind: str, params: dict[str, Any] | None = None) -> None:
        self.index, self.kind = index, kind
        self.params: dict[str, Any] = dict(params or {})
        self._apply_params()

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, vectors: np.ndarray, kind: str = "auto", seed: int = 0) -> VectorIndex:
        """Index `vectors` [N, E] with `kind` (see `choose_kind`); approximate kinds are tuned."""
        x = _as_matrix(vectors)
        n, dim = x.shape
        kind = choose_kind(n, kind)
        params: dict[str, Any] = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            params = {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": 64}
        else:
            if n == 0:
                raise UsageError("an ivf index needs vectors to train on: index some images first")
            nlist = ivf_lists(n)
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = 10
            index.cp.seed = seed
            sample = x
            if n > IVF_TRAIN_PER_LIST * nlist:
                rows = np.random.default_rng(seed).choice(n, IVF_TRAIN_PER_LIST * nlist, replace=False)
                sample = x[np.sort(rows)]
            index.train(sample)
            params = {"nlist": nlist, "nprobe": min(nlist, 8)}
        out = cls(index, kind, params)
        out.add(x, tune=False)
        out.tune(seed=seed)
        return out

    def add(self, vectors: np.ndarray, tune: bool = True) -> None:
        """Append vectors [M, E]; they get ids ntotal..ntotal+M-1."""
        x = _as_matrix(vectors, self.dim)
        if len(x):
            self.index.add(x)
        if tune:
            self.tune()

    # ------------------------------------------------------------------ querying
    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [Q, E] -> (scores [Q, k'] float32, ids [Q, k'] int64), best first, k' = min(k, N)."""
        q = _as_matrix(queries, self.dim)
        k = min(k, self.ntotal)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        scores, ids = self.index.search(q, k)
        return scores, ids

    def reconstruct_all(self) -> np.ndarray:
        """Every stored vector [N, E] (to rebuild as another kind)."""
        if self.kind == "ivf":
            self.index.make_direct_map()
        return self.index.reconstruct_n(0, self.ntotal)

    # ------------------------------------------------------------------ tuning
    def _apply_params(self) -> None:
        if self.kind == "ivf" and "nprobe" in self.params:
            self.index.nprobe = int(self.params["nprobe"])
        if self.kind == "hnsw" and "ef_search" in self.params:
            self.index.hnsw.efSearch = int(self.params["ef_search"])

    def tune(self, target: float = TARGET_RECALL, queries: int = TUNE_QUERIES, seed: int = 0) -> float:
        """Smallest nprobe / efSearch reaching recall@10 >= `target` against exact search on
        `queries` calibration queries (module docstring); stores it in `params`. Returns the recall
        reached (1.0 for flat)."""
        n = self.ntotal
        if self.kind == "flat" or n <= 10:
            return 1.0
        rng = np.random.default_rng(seed)
        if self.kind == "ivf":
            self.index.make_direct_map()
        pairs = rng.integers(0, n, size=(queries, 2))
        q = np.stack([self.index.reconstruct(int(i)) + self.index.reconstruct(int(j)) for i, j in pairs])
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        truth = _exact_top(self, q, 10)
        if self.kind == "ivf":
            nlist = int(self.params["nlist"])
            grid = sorted({min(2**p, nlist) for p in range(0, int(math.log2(nlist)) + 2)})
            name = "nprobe"
        else:
            grid = [16, 32, 64, 128, 256, 512, 1024, 2048]
            name = "ef_search"
        reached = 0.0
        for value in grid:
            self.params[name] = value
            self._apply_params()
            reached = recall_at_k(self.index.search(q, 10)[1], truth)
            if reached >= target:
                break
        self.params["tuned_recall_at_10"] = round(reached, 4)
        return reached

    # ------------------------------------------------------------------ files
    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, kind: str, params: dict[str, Any]) -> VectorIndex:
        return cls(faiss.read_index(str(path)), kind, params)


def _exact_top(index: VectorIndex, queries: np.ndarray, k: int, block: int = 65536) -> np.ndarray:
    """Exact top-k ids of `queries` over the stored vectors, without holding a second copy."""
    n = index.ntotal
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for a in range(0, n, block):
        b = min(n, a + block)
        s = queries @ index.index.reconstruct_n(a, b - a).T
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, np.broadcast_to(np.arange(a, b), s.shape)], axis=1)
        top = np.argpartition(-s_all, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    return np.take_along_axis(best_i, np.argsort(-best_s, axis=1, kind="stable"), 1)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k ids that the approximate top-k also returns, over all queries."""
    hits = sum(len(set(a[:k]).intersection(e[:k])) for a, e in zip(approx_ids, exact_ids, strict=True))
    return hits / (k * len(exact_ids))
