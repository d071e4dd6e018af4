"""The ASGI application of `scl serve` (FastAPI), and the body-size guard in front of it.

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
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from scl_cli.errors import SclError, UsageError
from scl_cli.inference.inputs import InputError
from scl_cli.search.retriever import Hit
from scl_cli.serving.batching import ApiError
from scl_cli.serving.page import PAGE
from scl_cli.serving.service import Service


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
        return error(
            422,
            f"{where}: {first.get('msg', 'invalid request')}"
            if where
            else first.get("msg", "invalid request"),
        )

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

    async def uploads(
        request: Request, field: str = "image"
    ) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
        """Files of a multipart form (fields `image` / `images`) or a raw image body, and the other
        form fields."""
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            try:
                form = await request.form(
                    max_files=service.limits.max_texts, max_part_size=service.limits.max_upload_bytes
                )
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
        raise ApiError(
            415, f"send the {field} as multipart/form-data (field '{field}') or as a raw image body"
        )

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
        return {
            "embeddings": [f.itc[0].tolist() for f in features],
            "dim": service.model.model_config.itc_dim,
        }

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
    async def search_get(
        q: str = "", top_k: int | None = None, rerank: int | None = None, format: str = "json"
    ) -> Any:
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
            text, hits, seconds = await text_search(
                fields.get("query"), fields.get("top_k"), fields.get("rerank")
            )
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
