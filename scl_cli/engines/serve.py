"""Engine of `scl serve`: a trained model (and optionally an index) behind HTTP, on FastAPI + uvicorn.

Endpoints (JSON in and out; errors are `{"error": "..."}` with a 4xx status, and the server keeps
serving):

    GET  /                 a page to type a query (or upload an image) and see the contact sheet
    GET  /health           checkpoint, heads, index, device, limits
    POST /embed/text       {"texts": [...]} or {"text": "..."}  -> {"embeddings": [[...]], "dim"}
    POST /embed/image      multipart `image` file(s), or a raw image body -> {"embeddings", "dim"}
    POST /search           {"query", "top_k", "rerank"} or multipart `image` (+ `top_k`) -> {"hits"}
    GET  /search?q=...     the same for a text query; `&format=png`: the contact sheet
    POST /vqa              multipart `image` + `question` (+ `top_k`) -> {"answer", "score", "top"}
    GET  /media/{id}       a JPEG thumbnail of an indexed image

Concurrent requests are batched: texts, images and VQA questions each wait in a queue, and one
model thread takes up to `max_batch` of a kind at a time (after at most `batch_wait_s` for more to
arrive). Image decoding runs beside it in the request threads. Bodies above `max_upload_bytes` get
413 before they are read; malformed input gets 400/413/422 with a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from scl_cli.data.media import Media, MediaError, decode_media, load_many
from scl_cli.data.transforms import ImageTransform
from scl_cli.engines.serve_page import PAGE
from scl_cli.errors import SclError, UsageError
from scl_cli.inference import SCL, TextFeatures
from scl_cli.inference.hub import resolve_source
from scl_cli.inference.inputs import InputError
from scl_cli.reporting import NullReporter, Reporter
from scl_cli.search.retriever import Hit, Retriever
from scl_cli.search.store import checkpoint_id, find_indexes


@dataclass
class ServeLimits:
    """What one request may ask for, and how requests are batched."""

    max_upload_bytes: int = 16 * 2**20
    max_texts: int = 64  # per /embed/text request
    max_text_chars: int = 2000
    max_top_k: int = 100
    max_rerank: int = 64
    max_batch: int = 32  # requests of one kind per model call
    batch_wait_s: float = 0.005
    max_pending: int = 1024  # queued items per kind before 503


class ApiError(Exception):
    """A request the service refuses: HTTP `status` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- batching
class MicroBatcher:
    """Collects items submitted by concurrent requests and runs `run(items) -> results` on them in
    batches of at most `max_batch`, in `executor` (the one model thread)."""

    def __init__(self, name: str, run: Callable[[list[Any]], list[Any]], executor: ThreadPoolExecutor,
                 limits: ServeLimits) -> None:  # fmt: skip
        self.name, self.run, self.executor, self.limits = name, run, executor, limits
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = self.items = 0

    async def submit(self, item: Any) -> Any:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._work())
        if self.queue.qsize() >= self.limits.max_pending:
            raise ApiError(503, f"busy: {self.queue.qsize()} {self.name} requests queued — retry shortly")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _work(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.limits.batch_wait_s
            while len(batch) < self.limits.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
            live = [(item, future) for item, future in batch if not future.done()]
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in live])
            except Exception as err:  # noqa: BLE001 - one failed batch fails its requests, not the server
                for _, future in live:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.batches, self.items = self.batches + 1, self.items + len(live)
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


# ----------------------------------------------------------------------------- the service
class Service:
    """The model, the index (optional) and a batcher per kind of work."""

    def __init__(self, model: SCL, retriever: Retriever | None = None, limits: ServeLimits | None = None) -> None:
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
        return [TextFeatures(f.itc[i : i + 1], f.tokens[i : i + 1], f.mask[i : i + 1]) for i in range(len(texts))]

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
            top = [[self.model.answers[i], round(float(v), 6)] for v, i in zip(values.tolist(), index.tolist(), strict=True)]
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
            return await run_in_threadpool(decode_media, data, ext if len(ext) <= 5 else "", self.model.transform, frames)
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
            "batches": {b.name: {"batches": b.batches, "items": b.items} for b in (self.texts, self.images, self.questions)},
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


# ----------------------------------------------------------------------------- HTTP
class BodyLimit:
    """ASGI middleware: 413 for a body above `max_bytes` — by its Content-Length before anything is
    read (the rest is read and dropped, up to `drain` bytes, so the client sees the answer), or as
    soon as a chunked body passes the limit."""

    def __init__(self, app: Any, max_bytes: int, drain: int = 256 * 2**20) -> None:
        self.app, self.max_bytes, self.drain = app, max_bytes, drain

    async def _refuse(self, send: Any, size: str) -> None:
        body = json.dumps({"error": f"request body {size} is over the limit of "
                                    f"{self.max_bytes / 2**20:.0f} MB"}).encode()  # fmt: skip
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            read = 0
            if int(length) <= self.drain:
                while True:
                    message = await receive()
                    read += len(message.get("body", b""))
                    if message["type"] != "http.request" or not message.get("more_body"):
                        break
            await self._refuse(send, f"of {int(length) / 2**20:.1f} MB")
            return
        received, started = 0, False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, "(chunked)")


class _TooLarge(Exception):
    pass


def create_app(service: Service) -> BodyLimit:
    """The FastAPI application of `service` (routes: module docstring)."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.close()

    app = FastAPI(title="scl serve", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return error(err.status, str(err))

    @app.exception_handler(SclError)
    async def _scl_error(request: Request, err: SclError) -> JSONResponse:
        return error(400 if isinstance(err, UsageError | InputError) else 500, str(err))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(422, f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request"))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> JSONResponse:
        return error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception) -> JSONResponse:
        return error(500, f"internal error: {type(err).__name__}: {str(err)[:200]}")

    async def json_body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw:
            raise ApiError(400, "empty request body: send JSON")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ApiError(400, f"the body is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ApiError(422, "the body must be a JSON object")
        return data

    async def uploads(request: Request, field: str = "image") -> tuple[list[tuple[str, bytes]], dict[str, str]]:
        """Files of a multipart form (fields `image` / `images`) or a raw image body, and the other
        form fields."""
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=service.limits.max_texts, max_part_size=service.limits.max_upload_bytes)
            except HTTPException:
                raise
            except Exception as err:  # noqa: BLE001 - malformed multipart bodies raise many types
                raise ApiError(400, f"malformed multipart body ({err})") from None
            files, fields = [], {}
            for key, value in form.multi_items():
                if hasattr(value, "read"):
                    files.append((getattr(value, "filename", "") or key, await value.read()))
                else:
                    fields[key] = str(value)
            return files, fields
        if kind.startswith(("image/", "video/", "application/octet-stream")):
            subtype = kind.split("/")[-1].split(";")[0].strip()
            name = f"upload.{subtype}" if kind.startswith("video/") else ""
            return [(name, await request.body())], dict(request.query_params)
        raise ApiError(415, f"send the {field} as multipart/form-data (field '{field}') or as a raw image body")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.post("/embed/text")
    async def embed_text(request: Request) -> dict[str, Any]:
        data = await json_body(request)
        texts = data.get("texts", [data["text"]] if "text" in data else None)
        if not isinstance(texts, list) or not texts:
            raise ApiError(422, 'send {"texts": ["...", ...]} or {"text": "..."}')
        if len(texts) > service.limits.max_texts:
            raise ApiError(413, f"{len(texts)} texts; at most {service.limits.max_texts} per request")
        checked = [service.text(t, f"texts[{i}]") for i, t in enumerate(texts)]
        features = await asyncio.gather(*(service.texts.submit(t) for t in checked))
        return {"embeddings": [f.itc[0].tolist() for f in features], "dim": service.model.model_config.itc_dim}

    @app.post("/embed/image")
    async def embed_image(request: Request) -> dict[str, Any]:
        files, _ = await uploads(request)
        if not files:
            raise ApiError(422, "no image in the request (multipart field 'image')")
        pixels = [await service.pixels(data, name) for name, data in files]
        itc = await asyncio.gather(*(service.images.submit(p) for p in pixels))
        return {"embeddings": [v[0].tolist() for v in itc], "dim": service.model.model_config.itc_dim}

    async def text_search(query: Any, top_k: Any, rerank: Any) -> tuple[str, list[Hit], dict[str, float]]:
        retriever = service.need_index()
        text = service.text(query)
        k = service.number(top_k, "top_k", 10, 1, service.limits.max_top_k)
        r = service.number(rerank, "rerank", 0, 0, service.limits.max_rerank)
        t0 = time.perf_counter()
        features = await service.texts.submit(text)
        t1 = time.perf_counter()
        hits = (await service.in_model_thread(retriever.search_text_features, features, k, r))[0]
        return text, hits, {"encode": t1 - t0, "search_and_rerank": time.perf_counter() - t1}

    @app.get("/search")
    async def search_get(q: str = "", top_k: int | None = None, rerank: int | None = None, format: str = "json") -> Any:
        text, hits, seconds = await text_search(q, top_k, rerank)
        if format == "png":
            png = await service.in_model_thread(service.sheet_png, hits, f"text->image: {text}")
            return Response(png, media_type="image/png")
        return {"query": text, "mode": "text->image", "rerank": rerank or 0, "hits": [service.hit_json(h) for h in hits],
                "seconds": {k: round(v, 4) for k, v in seconds.items()}}  # fmt: skip

    @app.post("/search")
    async def search_post(request: Request) -> dict[str, Any]:
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/json") or not kind:
            data = await json_body(request)
            text, hits, seconds = await text_search(data.get("query"), data.get("top_k"), data.get("rerank"))
            return {"query": text, "mode": "text->image", "rerank": data.get("rerank") or 0,
                    "hits": [service.hit_json(h) for h in hits], "seconds": {k: round(v, 4) for k, v in seconds.items()}}  # fmt: skip
        files, fields = await uploads(request)
        if not files and fields.get("query"):
            text, hits, seconds = await text_search(fields.get("query"), fields.get("top_k"), fields.get("rerank"))
            return {"query": text, "mode": "text->image", "hits": [service.hit_json(h) for h in hits]}
        if len(files) != 1:
            raise ApiError(422, f"send one image to search with (got {len(files)})")
        retriever = service.need_index()
        k = service.number(fields.get("top_k"), "top_k", 10, 1, service.limits.max_top_k)
        pixels = await service.pixels(files[0][1], files[0][0])
        itc = await service.images.submit(pixels)
        hits = (await service.in_model_thread(retriever.search_image_features, itc, k))[0]
        return {"query": files[0][0] or "upload", "mode": "image->image", "rerank": 0,
                "hits": [service.hit_json(h) for h in hits]}  # fmt: skip

    @app.post("/vqa")
    async def vqa(request: Request) -> dict[str, Any]:
        try:
            service.model.require_head("vqa")
        except UsageError as err:
            raise ApiError(400, str(err)) from None
        if service.model.answers is None:
            raise ApiError(400, f"{service.model.source}: has a VQA head but no answer list")
        files, fields = await uploads(request)
        if len(files) != 1:
            raise ApiError(422, f"send one image (multipart field 'image'); got {len(files)}")
        question = service.text(fields.get("question"), "question")
        k = service.number(fields.get("top_k"), "top_k", 3, 1, service.limits.max_top_k)
        pixels = await service.pixels(files[0][1], files[0][0])
        return await service.questions.submit((pixels[:1], question, k))

    @app.get("/media/{item}")
    async def media(item: int) -> Any:
        jpeg = await asyncio.get_running_loop().run_in_executor(None, service.thumbnail_jpeg, item)
        return Response(jpeg, media_type="image/jpeg")

    return BodyLimit(app, service.limits.max_upload_bytes)


# ----------------------------------------------------------------------------- starting
def load_service(
    ckpt: str | Path, index: Path | None = None, device: str = "auto", dtype: str | None = None,
    limits: ServeLimits | None = None, reporter: Reporter | None = None,
) -> Service:  # fmt: skip
    """Load the checkpoint (a local path or a Hub id) and the index: `index`, else the newest one
    made from these weights (none: the server runs without /search)."""
    reporter = reporter or NullReporter()
    path = resolve_source(ckpt)
    model = SCL.from_pretrained(path, device=device, dtype=dtype)
    model.source = str(ckpt)
    if index is None:
        same, _ = find_indexes(path, checkpoint_id(path).fingerprint)
        index = same[0][0] if same else None
        if index is None:
            reporter.warn(f"no index made from {ckpt}: /search is off (make one with `scl index`, or pass --index)")
    retriever = Retriever(index, path, model=model) if index is not None else None
    return Service(model, retriever, limits)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one); `UsageError` in one line when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every keep-alive response waited ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def _server(service: Service, log_level: str) -> Any:
    import uvicorn

    config = uvicorn.Config(create_app(service), log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


@contextlib.contextmanager
def running(service: Service, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Serve `service` from a background thread while the block runs; yields the base URL
    (`http://127.0.0.1:PORT`). For tests and benchmarks: port 0 picks a free port."""
    sock = listen(host, port)
    server = _server(service, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="scl-serve", daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.01)
    if not server.started:
        raise RuntimeError("the server did not start")
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve(
    ckpt: str | Path, index: Path | None = None, host: str = "127.0.0.1", port: int = 8000,
    device: str = "auto", dtype: str | None = None, limits: ServeLimits | None = None,
    reporter: Reporter | None = None, log_level: str = "warning",
) -> None:  # fmt: skip
    """Load, then serve on host:port until interrupted (Ctrl-C)."""
    reporter = reporter or NullReporter()
    sock = listen(host, port)  # before the model loads: a taken port fails at once
    service = load_service(ckpt, index, device, dtype, limits, reporter)
    where = service.retriever.index_dir if service.retriever is not None else "no index"
    reporter.info(f"serving {ckpt} ({', '.join(service.model.heads) or 'no task heads'}; {where}) on "
                  f"http://{host}:{sock.getsockname()[1]}/ — Ctrl-C to stop")  # fmt: skip
    if host not in ("127.0.0.1", "localhost", "::1"):
        reporter.warn(f"listening on {host}: anyone who can reach this address can query the model")
    _server(service, log_level).run(sockets=[sock])


__all__ = ["ApiError", "MicroBatcher", "ServeLimits", "Service", "create_app", "load_service", "running", "serve"]
