"""Search over an index from `scl index`: text -> image and image -> image (`Retriever`).

Stage 1 ranks the index by ITC similarity (faiss). Stage 2 (`rerank` K > 0, text queries)
re-encodes the top K images from their files or shards and re-scores each (query, image) pair with
the fusion score (`scl_cli.model.scoring.fusion_scores`: rank head or ITM match logit); the K
re-scored hits come first in that order, the rest follow in ITC order — the ranking
`scl eval retrieval --rerank K` measures (`search.ranking.rerank_order`). Hits whose file is gone are reported, not fatal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scl_cli.data.transforms import ImageTransform
from scl_cli.devices import pick_device
from scl_cli.errors import UsageError
from scl_cli.inference.loading import LoadedModel, load_model
from scl_cli.model.scoring import fusion_scores, image_features, text_features
from scl_cli.search.contact_sheet import Tile, contact_sheet
from scl_cli.search.faiss_index import VectorIndex
from scl_cli.search.media import Media, MediaError, load_file, load_many
from scl_cli.search.ranking import rerank_order
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

    def __init__(self, index_dir: Path, ckpt: Path | None = None, device: str = "auto") -> None:
        self.index_dir = Path(index_dir)
        self.info: IndexInfo = read_info(self.index_dir)
        self.ckpt: CheckpointId = checkpoint_id(
            Path(ckpt) if ckpt is not None else Path(self.info.checkpoint)
        )
        check_fingerprint(self.info, self.ckpt, self.index_dir)
        self.device = pick_device(device)
        self.loaded: LoadedModel = load_model(self.ckpt.path)
        self.model = self.loaded.model.to(self.device).eval()
        self.vectors = VectorIndex.load(self.index_dir / INDEX_FILE, self.info.kind, self.info.params)
        self.meta = MetaStore(self.index_dir)
        if not (self.vectors.ntotal == len(self.meta) == self.info.count):
            raise UsageError(
                f"{self.index_dir}: {self.vectors.ntotal} vectors, {len(self.meta)} metadata lines and count "
                f"{self.info.count} disagree (an interrupted --add?) — delete it and run `scl index` again"
            )
        self.transform = ImageTransform(self.model.config.vision.image_size)
        self.timings: dict[str, float] = {}  # seconds of the last query: encode, search, rerank

    # ------------------------------------------------------------------ features
    def encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ITC [Q, E], fusion tokens [Q, L, D], mask [Q, L]) of text queries."""
        ids, mask = self.loaded.tokenizer.encode(texts, self.model.config.text.max_len)
        itc, tokens = text_features(self.model, ids.to(self.device), mask.to(self.device))
        assert tokens is not None
        return itc, tokens, mask.to(self.device)

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
    @torch.no_grad()
    def search_texts(self, queries: list[str], top_k: int = 10, rerank: int = 0) -> list[list[Hit]]:
        """Best-first hits per text query: ITC top max(top_k, rerank), the first `rerank` re-scored."""
        if top_k < 1 or rerank < 0:
            raise UsageError(f"--top-k must be >= 1 and --rerank >= 0 (got {top_k}, {rerank})")
        t0 = time.perf_counter()
        itc, tokens, mask = self.encode_texts(queries)
        t1 = time.perf_counter()
        scores, ids = self.vectors.search(itc.float().cpu().numpy(), max(top_k, rerank))
        t2 = time.perf_counter()
        hit_lists = [self._hits(scores[q], ids[q]) for q in range(len(queries))]
        if rerank:
            hit_lists = self._rerank(hit_lists, tokens, mask, rerank)
        self.timings = {"encode": t1 - t0, "search": t2 - t1, "rerank": time.perf_counter() - t2}
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
        score; each candidate image is encoded once for all queries, pairs go `pair_batch` at a
        time. Unreadable candidates follow the re-scored ones, then the rest in ITC order."""
        frames = max(1, min(self.info.frames, self.model.config.vision.max_frames))
        unique = sorted({h.id: h for hits in hit_lists for h in hits[:k]}.items())
        pixels = load_many([Media(h.path, h.shard, h.key) for _, h in unique], self.transform, frames)
        encoded: dict[int, torch.Tensor] = {}  # id -> fusion-space image tokens [S, D]
        frames_of: dict[int, int] = {}  # id -> frames decoded (1 for an image)
        failed: dict[int, MediaError] = {}
        by_frames: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for (i, _), p in zip(unique, pixels, strict=True):
            if isinstance(p, MediaError):
                failed[i] = p
            else:
                frames_of[i] = int(p.shape[0])
                by_frames.setdefault(frames_of[i], []).append((i, p))
        for group in by_frames.values():
            for a in range(0, len(group), 32):
                chunk = group[a : a + 32]
                _, image_tokens = image_features(
                    self.model, torch.stack([p for _, p in chunk]).to(self.device)
                )
                assert image_tokens is not None
                encoded.update((i, t) for (i, _), t in zip(chunk, image_tokens, strict=True))
        pairs = [
            (q, j) for q, hits in enumerate(hit_lists) for j, h in enumerate(hits[:k]) if h.id in encoded
        ]
        pairs.sort(key=lambda pair: frames_of[hit_lists[pair[0]][pair[1]].id])  # clips of a length together
        for a in range(0, len(pairs), pair_batch):
            chunk = pairs[a : a + pair_batch]
            for t in sorted({frames_of[hit_lists[q][j].id] for q, j in chunk}):
                part = [(q, j) for q, j in chunk if frames_of[hit_lists[q][j].id] == t]
                rows = torch.tensor([q for q, _ in part], device=tokens.device)
                images = torch.stack([encoded[hit_lists[q][j].id] for q, j in part])
                values = fusion_scores(self.model, tokens[rows], mask[rows], images, t)
                for (q, j), value in zip(part, values.cpu().tolist(), strict=True):
                    hit_lists[q][j].score, hit_lists[q][j].stage = float(value), "rerank"
        out = []
        for hits in hit_lists:
            head, tail = hits[:k], hits[k:]
            for h in head:
                if h.id in failed:
                    h.missing = h.missing or str(failed[h.id]) == "missing file"
            scored = [h for h in head if h.stage == "rerank"]
            scored = [scored[i] for i in rerank_order(torch.tensor([h.score for h in scored])).tolist()]
            ordered = scored + [h for h in head if h.stage != "rerank"] + tail
            for rank, hit in enumerate(ordered, start=1):
                hit.rank = rank
            out.append(ordered)
        return out

    @torch.no_grad()
    def search_image(self, image: Path, top_k: int = 10) -> list[Hit]:
        """Best-first hits for an image (or video) file: ITC image feature against the index."""
        frames = max(1, min(self.info.frames, self.model.config.vision.max_frames))
        try:
            pixels = load_file(Path(image), self.transform, frames)
        except MediaError as err:
            raise UsageError(f"--image {image}: {err}") from None
        t0 = time.perf_counter()
        itc, _ = image_features(self.model, pixels.unsqueeze(0).to(self.device), with_tokens=False)
        t1 = time.perf_counter()
        scores, ids = self.vectors.search(itc.float().cpu().numpy(), top_k)
        self.timings = {"encode": t1 - t0, "search": time.perf_counter() - t1, "rerank": 0.0}
        return self._hits(scores[0], ids[0])

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
