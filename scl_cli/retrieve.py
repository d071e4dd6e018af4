"""Engine of `scl retrieve`: text -> image and image -> image search over an index from `scl index`.

Stage 1 ranks the index by ITC similarity (faiss). Stage 2 (`rerank` K > 0, text queries)
re-encodes the top K images from their files or shards and re-scores each (query, image) pair with
the fusion score (`scl_cli.retrieval.features.fusion_scores`: rank head or ITM match logit); the K
re-scored hits come first in that order, the rest follow in ITC order — the ranking
`scl eval retrieval --rerank K` measures. Hits whose file is gone are reported, not fatal.
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
from scl_cli.errors import UsageError
from scl_cli.model.loading import LoadedModel, load_model
from scl_cli.retrieval.contact_sheet import Tile, contact_sheet
from scl_cli.retrieval.faiss_index import VectorIndex
from scl_cli.retrieval.features import fusion_scorer_name, fusion_scores, image_features, text_features
from scl_cli.retrieval.media import Media, MediaError, load_file, load_many
from scl_cli.retrieval.store import (
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
        self.ckpt: CheckpointId = checkpoint_id(Path(ckpt) if ckpt is not None else Path(self.info.checkpoint))
        check_fingerprint(self.info, self.ckpt, self.index_dir)
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
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
        out = []
        for q in range(len(queries)):
            hits = self._hits(scores[q], ids[q])
            if rerank:
                hits = self._rerank(hits, tokens[q : q + 1], mask[q : q + 1], rerank)
            out.append(hits[:top_k])
        self.timings = {"encode": t1 - t0, "search": t2 - t1, "rerank": time.perf_counter() - t2}
        return out

    def _rerank(self, hits: list[Hit], tokens: torch.Tensor, mask: torch.Tensor, k: int) -> list[Hit]:
        """Re-score the first k hits with the fusion score; unreadable ones follow the re-scored."""
        head, tail = hits[:k], hits[k:]
        frames = max(1, min(self.info.frames, self.model.config.vision.max_frames))
        pixels = load_many([Media(h.path, h.shard, h.key) for h in head], self.transform, frames)
        scored: list[tuple[float, int, Hit]] = []
        unreadable: list[Hit] = []
        by_frames: dict[int, list[int]] = {}
        for j, p in enumerate(pixels):
            if isinstance(p, MediaError):
                head[j].missing = head[j].missing or str(p) == "missing file"
                unreadable.append(head[j])
            else:
                by_frames.setdefault(int(p.shape[0]), []).append(j)
        for t, rows in by_frames.items():
            images = torch.stack([pixels[j] for j in rows]).to(self.device)  # type: ignore[misc]
            _, image_tokens = image_features(self.model, images)
            assert image_tokens is not None
            n = len(rows)
            # Contiguous copies: linear layers on stride-0 (expanded) inputs are very slow on CPU.
            text, text_mask = tokens.expand(n, -1, -1).contiguous(), mask.expand(n, -1).contiguous()
            values = fusion_scores(self.model, text, text_mask, image_tokens, t)
            for j, value in zip(rows, values.cpu().tolist(), strict=True):
                head[j].score, head[j].stage = float(value), "rerank"
                scored.append((float(value), j, head[j]))
        # Best fusion score first; ties keep the ITC order (as `two_stage_scores` does).
        scored.sort(key=lambda item: (-item[0], item[1]))
        ordered = [h for _, _, h in scored] + unreadable + tail
        for rank, hit in enumerate(ordered, start=1):
            hit.rank = rank
        return ordered

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
    index: Path | None, ckpt: Path | None, images: Path | None, build: Callable[[Path, Path], Path] | None = None
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


def retrieve(
    query: str | None = None,
    image: Path | None = None,
    index: Path | None = None,
    ckpt: Path | None = None,
    images: Path | None = None,
    top_k: int = 10,
    rerank: int = 0,
    grid: Path | None = None,
    build: Callable[[Path, Path], Path] | None = None,
    device: str = "auto",
) -> RetrievalResult:
    """One query (text `query` or image file `image`) against the resolved index; see the module docstring."""
    if (query is None) == (image is None):
        raise UsageError("pass exactly one of --query TEXT or --image FILE")
    if image is not None and rerank:
        raise UsageError("--rerank re-scores (text, image) pairs: use it with --query")
    started = time.perf_counter()
    where = resolve_index(index, ckpt, images, build)
    retriever = Retriever(where, ckpt, device)
    loaded_s = time.perf_counter() - started
    if query is not None:
        hits = retriever.search_texts([query], top_k, rerank)[0]
        mode = "text->image"
    else:
        hits = retriever.search_image(Path(str(image)), top_k)
        mode = "image->image"
    scorer = fusion_scorer_name(retriever.model) if rerank else "itc"
    seconds = {"load": round(loaded_s, 4), **{k: round(v, 4) for k, v in retriever.timings.items()}}
    result = RetrievalResult(query if query is not None else str(image), mode, str(where), str(retriever.ckpt.path),
                             scorer, rerank, hits, seconds)  # fmt: skip
    if grid is not None:
        retriever.write_grid(hits, grid, f"{mode}: {result.query}")
    return result
