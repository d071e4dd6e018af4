"""What the HTTP service does with a request, model-side: encode, answer, search, thumbnails.
Model calls run on one thread, fed by the micro-batchers."""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from starlette.concurrency import run_in_threadpool

from scl_cli.data.media import Media, MediaError, decode_media, load_many
from scl_cli.data.transforms import ImageTransform
from scl_cli.inference import SCL, TextFeatures
from scl_cli.search.retriever import Hit, Retriever
from scl_cli.serving.batching import ApiError, MicroBatcher, ServeLimits


# ----------------------------------------------------------------------------- the service
class Service:
    """The model, the index (optional) and a batcher per kind of work."""

    def __init__(
        self, model: SCL, retriever: Retriever | None = None, limits: ServeLimits | None = None
    ) -> None:
        self.model, self.retriever = model, retriever
        self.limits = limits or ServeLimits()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scl-model")
        self.texts = MicroBatcher("text", self._encode_texts, self.executor, self.limits)
        self.images = MicroBatcher("image", self._encode_images, self.executor, self.limits)
        self.questions = MicroBatcher("vqa", self._answer, self.executor, self.limits)
        self.started = time.time()
        self.thumbnail = ImageTransform(192)

    # batch functions: run in the model thread
    def _encode_texts(self, texts: list[str]) -> list[TextFeatures]:
        f = self.model.text_features(texts)
        assert f.tokens is not None
        return [
            TextFeatures(f.itc[i : i + 1], f.tokens[i : i + 1], f.mask[i : i + 1]) for i in range(len(texts))
        ]

    def _encode_images(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(pixels)
        by_frames: dict[int, list[int]] = {}
        for i, p in enumerate(pixels):
            by_frames.setdefault(int(p.shape[0]), []).append(i)
        for rows in by_frames.values():
            itc, _ = self.model.image_features(torch.stack([pixels[i] for i in rows]), with_tokens=False)
            for j, i in enumerate(rows):
                out[i] = itc[j : j + 1].cpu()
        return out  # type: ignore[return-value]

    def _answer(self, items: list[tuple[torch.Tensor, str, int]]) -> list[dict[str, Any]]:
        assert self.model.answers is not None
        images = torch.stack([pixels for pixels, _, _ in items])
        ids, mask = self.model.tokenize([q for _, q, _ in items])
        probs = self.model.vqa_logits(images, ids, mask).sigmoid().cpu()
        out = []
        for row, (_, question, k) in zip(probs, items, strict=True):
            values, index = row.topk(max(1, min(k, len(self.model.answers))))
            top = [
                [self.model.answers[i], round(float(v), 6)]
                for v, i in zip(values.tolist(), index.tolist(), strict=True)
            ]
            out.append({"question": question, "answer": top[0][0], "score": top[0][1], "top": top})
        return out

    async def in_model_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # checks shared by the endpoints
    def text(self, value: Any, what: str = "query") -> str:
        if not isinstance(value, str):
            raise ApiError(422, f"{what} must be a string")
        if not value.strip():
            raise ApiError(422, f"{what} is empty")
        if len(value) > self.limits.max_text_chars:
            raise ApiError(413, f"{what} has {len(value)} characters; at most {self.limits.max_text_chars}")
        return value

    def number(self, value: Any, name: str, default: int, low: int, high: int) -> int:
        if value is None or value == "":
            return default
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ApiError(422, f"{name} must be an integer, got {str(value)[:40]!r}") from None
        if not low <= number <= high:
            raise ApiError(422, f"{name} must be between {low} and {high}, got {number}")
        return number

    def need_index(self) -> Retriever:
        if self.retriever is None:
            raise ApiError(400, "no index: start the server with --index INDEX (make one with `scl index`)")
        return self.retriever

    async def pixels(self, data: bytes, name: str = "") -> torch.Tensor:
        """uint8 [T, 3, S, S] of an uploaded image or video, decoded in a request thread."""
        if not data:
            raise ApiError(400, "the upload is empty")
        frames = self.retriever.frames if self.retriever is not None else self.model.video_frames
        ext = Path(name).suffix.lstrip(".").lower()
        try:
            return await run_in_threadpool(
                decode_media, data, ext if len(ext) <= 5 else "", self.model.transform, frames
            )
        except MediaError as err:
            raise ApiError(400, f"{name or 'upload'}: {err} (not an image or video scl can decode)") from None

    def health(self) -> dict[str, Any]:
        index = None
        if self.retriever is not None:
            index = {"path": str(self.retriever.index_dir), "count": self.retriever.info.count,
                     "kind": self.retriever.info.kind}  # fmt: skip
        return {
            "status": "ok",
            "checkpoint": self.model.source,
            "heads": self.model.heads,
            "scorer": self.model.scorer,
            "embedding_dim": self.model.model_config.itc_dim,
            "index": index,
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "limits": asdict(self.limits),
            "batches": {
                b.name: {"batches": b.batches, "items": b.items}
                for b in (self.texts, self.images, self.questions)
            },
            "uptime_s": round(time.time() - self.started, 1),
        }

    def hit_json(self, hit: Hit) -> dict[str, Any]:
        return {**asdict(hit), "label": hit.label, "url": f"/media/{hit.id}"}

    def thumbnail_jpeg(self, item: int) -> bytes:
        retriever = self.need_index()
        if not 0 <= item < retriever.info.count:
            raise ApiError(404, f"no item {item} in the index (0..{retriever.info.count - 1})")
        meta = retriever.meta.get([item])[0]
        pixels = load_many([Media.from_meta(meta)], self.thumbnail, 1)[0]
        if isinstance(pixels, MediaError):
            raise ApiError(404, f"item {item}: {pixels}")
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(pixels[0].permute(1, 2, 0).contiguous().numpy()).save(buffer, "JPEG", quality=85)
        return buffer.getvalue()

    def sheet_png(self, hits: list[Hit], title: str) -> bytes:
        retriever = self.need_index()
        with tempfile.TemporaryDirectory(prefix="scl-sheet-") as tmp:
            path = retriever.write_grid(hits, Path(tmp) / "sheet.png", title)
            return path.read_bytes()

    async def close(self) -> None:
        for batcher in (self.texts, self.images, self.questions):
            await batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
