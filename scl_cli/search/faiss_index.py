"""Inner-product vector search over unit-length ITC features, with faiss.

Kinds (`--kind`):
- `flat`: exact search (`IndexFlatIP`); the default below `AUTO_FLAT_MAX` vectors.
- `ivf`: the default from `AUTO_FLAT_MAX` on. Inverted lists (about 2 sqrt(N) of them, k-means on
  64 vectors per list) holding 8-bit scalar-quantised vectors (`IndexIVFScalarQuantizer`): a query
  reads a quarter of the bytes a float32 list would cost; the best `k_factor` x k candidates are
  then re-scored exactly (`IndexRefineFlat`), so returned scores are exact cosines. Trains in a
  minute per million vectors on 2 cores; appended vectors join the existing lists.
- `hnsw`: a graph (`IndexHNSWFlat`, M=16, efConstruction=40): no training, but minutes per
  million vectors to build on few cores.

An approximate index is tuned when it is built: `tune` sets the smallest `nprobe` (ivf) or
`efSearch` (hnsw, at least 32) whose recall@10 against exact search reaches `TARGET_RECALL` on 200
indexed vectors used as queries, each query's own vector left out of both result lists. On the
512-d synthetic benchmark this estimate came out 0.01-0.02 below the recall of fresh queries from
the same distribution (`scl bench retrieve` measures the latter). The values are stored with the
index (`params`) and reapplied when it is loaded; appends keep them (same fraction of data probed).

A handful of queries is answered on one thread: an OpenMP fork/join costs more than the search
itself (on a busy 2-core machine a 10k-vector exact query took 32 ms with 2 threads, 0.05 ms with 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
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
IVF_REFINE_FACTOR = 4  # candidates re-scored exactly: k_factor x k
TUNE_QUERIES = 200
SINGLE_THREAD_QUERIES = 16  # up to this many queries per call run on one thread
NPROBE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
EF_GRID = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


@contextmanager
def _one_thread(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def choose_kind(count: int, requested: str = "auto") -> str:
    """The kind an index of `count` vectors gets: `requested`, or for "auto" flat below
    `AUTO_FLAT_MAX` and ivf from there on."""
    if requested not in KINDS:
        raise UsageError(f"--kind {requested!r}: expected one of {', '.join(KINDS)}")
    if requested != "auto":
        return requested
    return "flat" if count < AUTO_FLAT_MAX else "ivf"


def ivf_lists(count: int) -> int:
    """Number of inverted lists: the power of two nearest 2 sqrt(count), with at least
    `IVF_TRAIN_PER_LIST` training vectors per list."""
    nlist = 2 ** round(math.log2(max(2 * math.sqrt(max(count, 1)), 1)))
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
        self._keep: tuple = ()  # sub-indexes a freshly built composite index points to
        self._apply_params()

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, vectors: np.ndarray, kind: str = "auto", seed: int = 0) -> VectorIndex:
        """Index `vectors` [N, E] with `kind` (see `choose_kind`); approximate kinds are tuned."""
        x = _as_matrix(vectors)
        n, dim = x.shape
        kind = choose_kind(n, kind)
        params: dict[str, Any] = {}
        keep: tuple = ()
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            params = {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": EF_GRID[0]}
        else:
            if n == 0:
                raise UsageError("an ivf index needs vectors to train on: index some images first")
            nlist = ivf_lists(n)
            quantizer = faiss.IndexFlatIP(dim)
            lists = faiss.IndexIVFScalarQuantizer(
                quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
            lists.cp.niter, lists.cp.seed = 10, seed
            index = faiss.IndexRefineFlat(lists)
            keep = (quantizer, lists)  # the Python objects own the C++ ones
            sample = x
            if n > IVF_TRAIN_PER_LIST * nlist:
                rows = np.random.default_rng(seed).choice(n, IVF_TRAIN_PER_LIST * nlist, replace=False)
                sample = x[np.sort(rows)]
            index.train(sample)
            params = {"nlist": nlist, "nprobe": min(nlist, 8), "k_factor": IVF_REFINE_FACTOR}
        out = cls(index, kind, params)
        out._keep = keep
        out.add(x)
        out.tune(seed=seed)
        return out

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors [M, E]; they get ids ntotal..ntotal+M-1."""
        x = _as_matrix(vectors, self.dim)
        if len(x):
            self.index.add(x)

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
        with _one_thread(len(q) <= SINGLE_THREAD_QUERIES):
            scores, ids = self.index.search(q, k)
        return scores, ids

    def reconstruct_all(self) -> np.ndarray:
        """Every stored vector [N, E] (to rebuild as another kind)."""
        return self.index.reconstruct_n(0, self.ntotal)

    # ------------------------------------------------------------------ tuning
    def _apply_params(self) -> None:
        if self.kind == "ivf":
            if "nprobe" in self.params:
                faiss.extract_index_ivf(self.index).nprobe = int(self.params["nprobe"])
            if "k_factor" in self.params:
                faiss.downcast_index(self.index).k_factor = float(self.params["k_factor"])
        if self.kind == "hnsw" and "ef_search" in self.params:
            self.index.hnsw.efSearch = int(self.params["ef_search"])

    def tune(self, target: float = TARGET_RECALL, queries: int = TUNE_QUERIES, seed: int = 0) -> float:
        """Smallest nprobe / efSearch reaching recall@10 >= `target` against exact search on up to
        `queries` indexed vectors as queries, self excluded (module docstring); stores it in
        `params`. Returns the recall reached (1.0 for flat)."""
        n = self.ntotal
        if self.kind == "flat" or n <= 11:
            return 1.0
        rows = np.sort(np.random.default_rng(seed).choice(n, min(queries, n), replace=False))
        q = np.stack([self.index.reconstruct(int(i)) for i in rows])
        truth = _drop_self(_exact_top(self, q, 11), rows)
        if self.kind == "ivf":
            name, grid = "nprobe", [v for v in NPROBE_GRID if v < int(self.params["nlist"])]
            grid.append(int(self.params["nlist"]))
        else:
            name, grid = "ef_search", list(EF_GRID)
        reached = 0.0
        for value in grid:
            self.params[name] = value
            self._apply_params()
            reached = recall_at_k(_drop_self(self.index.search(q, 11)[1], rows), truth)
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
    """Exact top-k ids of `queries` over the stored vectors, one block of vectors at a time."""
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


def _drop_self(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each row's ids without the query's own id, cut to one fewer column ([Q, k] -> [Q, k - 1])."""
    return np.stack(
        [[i for i in row if i != own][: ids.shape[1] - 1] for row, own in zip(ids, rows, strict=True)]
    )


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k ids that the approximate top-k also returns, over all queries."""
    hits = sum(len(set(a[:k]).intersection(e[:k])) for a, e in zip(approx_ids, exact_ids, strict=True))
    return hits / (k * len(exact_ids))
