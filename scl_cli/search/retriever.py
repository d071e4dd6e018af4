"""Search over an index from `scl index`: text -> image and image -> image (`Retriever`).

Stage 1 ranks the index by ITC similarity (faiss). Stage 2 (`rerank` K > 0, text queries)
re-encodes the top K images from their files or shards and re-scores each (query, image) pair with
the fusion score (`SCL.fusion_scores`: rank head or ITM match logit); the K re-scored hits come
first in that order, the rest follow in ITC order — the ranking `scl eval retrieval --rerank K`
measures, computed by the same functions (`search.ranking.score_pairs`, `rerank_rows`). Hits whose
file is gone are reported, not fatal. The model is loaded once: one `Retriever` answers any number
of queries (`scl retrieve` with several queries, `scl serve`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scl_cli.data.media import Media, MediaError, load_many
from scl_cli.data.transforms import ImageTransform
from scl_cli.errors import UsageError
from scl_cli.inference import SCL, TextFeatures
from scl_cli.inference.inputs import ImageInput
from scl_cli.search.contact_sheet import Tile, contact_sheet
from scl_cli.search.faiss_index import VectorIndex
from scl_cli.search.ranking import rerank_rows, score_pairs
from scl_cli.search.store import (
    INDEX_FILE,
    CheckpointId,
    IndexInfo,
    MetaStore,
    check_fingerprint,
    checkpoint_id,
    find_indexes,
    read_info,
)


@dataclass
class Hit:
    rank: int
    id: int
    score: float  # fusion score when `stage` is "rerank", else the ITC cosine similarity
    itc_score: float
    stage: str  # "rerank" or "itc"
    path: str | None = None
    shard: str | None = None
    key: str | None = None
    captions: list[str] = field(default_factory=list)
    frames: int = 1
    missing: bool = False  # the file (or shard) is gone from disk

    @property
    def label(self) -> str:
        return Media(self.path, self.shard, self.key).label


@dataclass
class RetrievalResult:
    query: str
    mode: str  # "text->image" or "image->image"
    index: str
    checkpoint: str
    scorer: str  # "itc", or the fusion scorer of stage 2
    rerank: int
    hits: list[Hit]
    seconds: dict[str, float]

    @property
    def missing(self) -> list[Hit]:
        return [h for h in self.hits if h.missing]

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"missing": len(self.missing)}


class Retriever:
    """An index and the model it was built with, ready for queries (the library entry point)."""

    def __init__(
        self, index_dir: Path, ckpt: Path | None = None, device: str = "auto", model: SCL | None = None
    ) -> None:
        """`model`: the checkpoint already loaded (as `scl serve` holds it); else `ckpt` (default:
        the index's) is loaded on `device`."""
        self.index_dir = Path(index_dir)
        self.info: IndexInfo = read_info(self.index_dir)
        self.ckpt: CheckpointId = checkpoint_id(
            Path(ckpt) if ckpt is not None else Path(self.info.checkpoint)
        )
        check_fingerprint(self.info, self.ckpt, self.index_dir)
        self.model: SCL = model if model is not None else SCL.from_pretrained(self.ckpt.path, device=device)
        self.device = self.model.device
        self.vectors = VectorIndex.load(self.index_dir / INDEX_FILE, self.info.kind, self.info.params)
        self.meta = MetaStore(self.index_dir)
        if not (self.vectors.ntotal == len(self.meta) == self.info.count):
            raise UsageError(
                f"{self.index_dir}: {self.vectors.ntotal} vectors, {len(self.meta)} metadata lines and count "
                f"{self.info.count} disagree (an interrupted --add?) — delete it and run `scl index` again"
            )
        self.transform = self.model.transform
        self.timings: dict[str, float] = {}  # seconds of the last query: encode, search, rerank

    @property
    def frames(self) -> int:
        """Frames per video, as the index was built."""
        return max(1, min(self.info.frames, self.model.model_config.vision.max_frames))

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        valid = [(float(s), int(i)) for s, i in zip(scores, ids, strict=True) if i >= 0]
        metas = self.meta.get([i for _, i in valid])
        hits = []
        for rank, ((score, i), meta) in enumerate(zip(valid, metas, strict=True), start=1):
            media = Media.from_meta(meta)
            hits.append(Hit(rank, i, score, score, "itc", media.path, media.shard, media.key,
                            list(meta.get("captions", [])), int(meta.get("frames", 1)), not media.exists()))  # fmt: skip
        return hits

    # ------------------------------------------------------------------ queries
    def search_texts(self, queries: list[str], top_k: int = 10, rerank: int = 0) -> list[list[Hit]]:
        """Best-first hits per text query: ITC top max(top_k, rerank), the first `rerank` re-scored."""
        t0 = time.perf_counter()
        features = self.model.text_features(queries, with_tokens=rerank > 0)
        self.timings = {"encode": time.perf_counter() - t0}
        return self.search_text_features(features, top_k, rerank)

    def search_text_features(
        self, features: TextFeatures, top_k: int = 10, rerank: int = 0
    ) -> list[list[Hit]]:
        """`search_texts` of queries already encoded (`SCL.text_features`, with tokens to re-rank)."""
        if top_k < 1 or rerank < 0:
            raise UsageError(f"--top-k must be >= 1 and --rerank >= 0 (got {top_k}, {rerank})")
        t1 = time.perf_counter()
        scores, ids = self.vectors.search(features.itc.float().cpu().numpy(), max(top_k, rerank))
        t2 = time.perf_counter()
        hit_lists = [self._hits(scores[q], ids[q]) for q in range(len(scores))]
        if rerank:
            assert features.tokens is not None, "re-ranking needs the queries' fusion tokens"
            hit_lists = self._rerank(hit_lists, features.tokens, features.mask, rerank)
        self.timings = {
            "encode": self.timings.get("encode", 0.0),
            "search": t2 - t1,
            "rerank": time.perf_counter() - t2,
        }
        return [hits[:top_k] for hits in hit_lists]

    def _rerank(
        self,
        hit_lists: list[list[Hit]],
        tokens: torch.Tensor,
        mask: torch.Tensor,
        k: int,
        pair_batch: int = 256,
    ) -> list[list[Hit]]:
        """Re-score the first k hits of each query (tokens [Q, L, D], mask [Q, L]) with the fusion
        score; each candidate image is encoded once for all queries, each (query, image) pair scored
        once. Unreadable candidates follow the re-scored ones, then the rest in ITC order."""
        unique = sorted({h.id: h for hits in hit_lists for h in hits[:k]}.items())
        pixels = load_many([Media(h.path, h.shard, h.key) for _, h in unique], self.transform, self.frames)
        bank: list[torch.Tensor] = []  # fusion-space image tokens [S, D] of each readable candidate
        frames_of: list[int] = []
        slot: dict[int, int] = {}  # index id -> position in bank
        failed: dict[int, MediaError] = {}
        by_frames: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for (i, _), p in zip(unique, pixels, strict=True):
            if isinstance(p, MediaError):
                failed[i] = p
            else:
                by_frames.setdefault(int(p.shape[0]), []).append((i, p))
        for t, group in by_frames.items():
            for a in range(0, len(group), 32):
                chunk = group[a : a + 32]
                _, image_tokens = self.model.image_features(torch.stack([p for _, p in chunk]))
                assert image_tokens is not None
                for (i, _), row in zip(chunk, image_tokens, strict=True):
                    slot[i] = len(bank)
                    bank.append(row)
                    frames_of.append(t)

        def scorer(image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
            out = torch.empty(len(image_idx))
            for t in sorted({frames_of[int(i)] for i in image_idx}):  # clips of a length together
                rows = [j for j, i in enumerate(image_idx.tolist()) if frames_of[i] == t]
                pick = text_idx[rows].to(tokens.device)
                images = torch.stack([bank[int(image_idx[j])] for j in rows])
                out[rows] = self.model.fusion_scores(tokens[pick], mask[pick], images, t).cpu()
            return out

        pairs = [(q, j) for q, hits in enumerate(hit_lists) for j, h in enumerate(hits[:k]) if h.id in slot]
        values = score_pairs(
            scorer,
            torch.tensor([slot[hit_lists[q][j].id] for q, j in pairs], dtype=torch.long),
            torch.tensor([q for q, _ in pairs], dtype=torch.long),
            max(len(hit_lists), 1),
            pair_batch,
        ) if pairs else torch.zeros(0)  # fmt: skip
        for (q, j), value in zip(pairs, values.tolist(), strict=True):
            hit_lists[q][j].score, hit_lists[q][j].stage = float(value), "rerank"
        out = []
        for hits in hit_lists:
            head, tail = hits[:k], hits[k:]
            for h in head:
                if h.id in failed:
                    h.missing = h.missing or str(failed[h.id]) == "missing file"
            scored = torch.tensor([h.stage == "rerank" for h in head], dtype=torch.bool)
            order = rerank_rows(torch.tensor([h.score for h in head]), scored).tolist() if head else []
            ordered = [head[i] for i in order] + tail
            for rank, hit in enumerate(ordered, start=1):
                hit.rank = rank
            out.append(ordered)
        return out

    def search_image(self, image: ImageInput, top_k: int = 10) -> list[Hit]:
        """Best-first hits for an image or video (a path, bytes, PIL image, array or tensor): its ITC
        feature against the index."""
        pixels = self.model.pixels([image], self.frames)[0]
        t0 = time.perf_counter()
        itc, _ = self.model.image_features(pixels.unsqueeze(0), with_tokens=False)
        self.timings = {"encode": time.perf_counter() - t0}
        return self.search_image_features(itc, top_k)[0]

    def search_image_features(self, itc: torch.Tensor, top_k: int = 10) -> list[list[Hit]]:
        """Best-first hits per ITC image feature (itc [Q, E], from `SCL.image_features`)."""
        if top_k < 1:
            raise UsageError(f"--top-k must be >= 1 (got {top_k})")
        t1 = time.perf_counter()
        scores, ids = self.vectors.search(itc.float().cpu().numpy(), top_k)
        self.timings = {
            "encode": self.timings.get("encode", 0.0),
            "search": time.perf_counter() - t1,
            "rerank": 0.0,
        }
        return [self._hits(scores[q], ids[q]) for q in range(len(scores))]

    def write_grid(self, hits: list[Hit], out: Path, title: str, tile: int = 192) -> Path:
        """Contact sheet of `hits` (see `contact_sheet`)."""
        pixels = load_many([Media(h.path, h.shard, h.key) for h in hits], ImageTransform(tile), 1)
        tiles = [
            Tile(None if isinstance(p, MediaError) else p, f"#{h.rank}  {h.score:.3f}" + (" (fusion)" if h.stage == "rerank" else ""),
                 h.captions[0] if h.captions else Path(h.label).name)
            for h, p in zip(hits, pixels, strict=True)
        ]  # fmt: skip
        return contact_sheet(tiles, out, title, tile)


# ----------------------------------------------------------------------------- which index
def resolve_index(
    index: Path | None,
    ckpt: Path | None,
    images: Path | None,
    build: Callable[[Path, Path], Path] | None = None,
) -> Path:
    """The index a query uses: `index`; else for `images` the cached index of that folder (built or
    extended by `build(ckpt, images)`); else the newest index made from `ckpt`'s weights."""
    if index is not None:
        return Path(index)
    if ckpt is None:
        raise UsageError("pass --index INDEX, or --ckpt CHECKPOINT (uses its newest index; with --images DIR, "
                         "indexes that folder first)")  # fmt: skip
    if images is not None:
        if build is None:
            raise UsageError("--images needs an index builder")
        return build(ckpt, images)
    ident = checkpoint_id(ckpt)
    same, other = find_indexes(ckpt, ident.fingerprint)
    if same:
        return same[0][0]
    hint = f"scl index --ckpt {ckpt} --images DIR (or --data DATASET_FOLDER --split test)"
    if other:
        raise UsageError(f"the indexes under {other[0][0].parent} were built with other weights than {ident.path} "
                         f"(e.g. step {other[0][1].step}); make one for it: {hint}, or pass --images DIR here")  # fmt: skip
    raise UsageError(f"no index made from {ckpt} yet: make one with `{hint}`, or pass --images DIR here")
