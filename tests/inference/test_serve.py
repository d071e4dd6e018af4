"""`scl serve` against a real server on 127.0.0.1 (a free port) and a real HTTP client (httpx):
search for "a red circle", VQA, embeddings, 50 concurrent requests, malformed input answered with a
4xx JSON error while the server keeps serving, and the `scl serve` command itself."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from scl_cli.engines.serve import load_service, running
from scl_cli.search.indexing import build_index
from scl_cli.serving.batching import ServeLimits

from ..conftest import ROOT
from .conftest import ANSWERS


def png(colour: str = "red", size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def index(heads_ckpt, shapes_root, tmp_path_factory) -> Path:
    return build_index(
        heads_ckpt, tmp_path_factory.mktemp("serve") / "index", data=shapes_root / "shapes", split="test"
    ).path


@pytest.fixture(scope="module")
def server(heads_ckpt, index):
    limits = ServeLimits(max_upload_bytes=4 * 2**20)
    with running(load_service(heads_ckpt, index, device="cpu", limits=limits)) as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client


def test_search_vqa_embeddings_and_health(server, index):
    health = server.get("/health").json()
    assert health["status"] == "ok" and health["heads"] == ["vqa", "nlvr2", "rank"]
    assert health["index"]["path"] == str(index) and health["index"]["count"] == 8

    found = server.post("/search", json={"query": "a red circle", "top_k": 3})
    assert found.status_code == 200, found.text
    hits = found.json()["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["stage"] == "itc" and h["url"] for h in hits)
    reranked = server.get("/search", params={"q": "a red circle", "top_k": 4, "rerank": 2}).json()["hits"]
    assert [h["stage"] for h in reranked] == ["rerank", "rerank", "itc", "itc"]
    sheet = server.get("/search", params={"q": "a red circle", "format": "png"})
    assert sheet.headers["content-type"] == "image/png" and Image.open(io.BytesIO(sheet.content)).width > 100
    assert server.get(hits[0]["url"]).headers["content-type"] == "image/jpeg"
    by_image = server.post("/search", files={"image": ("red.png", png(), "image/png")}, data={"top_k": "2"})
    assert (
        by_image.status_code == 200
        and by_image.json()["mode"] == "image->image"
        and len(by_image.json()["hits"]) == 2
    )

    answer = server.post("/vqa", files={"image": ("red.png", png(), "image/png")},
                         data={"question": "what colour is the shape?", "top_k": "2"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["answer"] in ANSWERS and len(body["top"]) == 2 and 0 < body["score"] < 1

    texts = server.post("/embed/text", json={"texts": ["a red circle", "a blue square"]}).json()
    assert len(texts["embeddings"]) == 2 and len(texts["embeddings"][0]) == texts["dim"] == 64
    image = server.post("/embed/image", content=png("blue"), headers={"content-type": "image/png"}).json()
    assert len(image["embeddings"]) == 1 and len(image["embeddings"][0]) == 64
    assert "<form" in server.get("/").text


def test_fifty_concurrent_requests_all_complete(server):
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=str(server.base_url), timeout=300) as client:
            calls = []
            for i in range(50):
                if i % 5 == 4:
                    calls.append(
                        client.post(
                            "/vqa",
                            files={"image": ("x.png", png(), "image/png")},
                            data={"question": f"what {i}?"},
                        )
                    )
                elif i % 5 == 3:
                    calls.append(
                        client.post("/embed/image", files={"image": ("x.png", png("green"), "image/png")})
                    )
                else:
                    calls.append(
                        client.post("/search", json={"query": f"a red circle number {i}", "top_k": 5})
                    )
            return await asyncio.gather(*calls)

    before = server.get("/health").json()["batches"]
    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 50, [
        r.text for r in responses if r.status_code != 200
    ][:3]
    after = server.get("/health").json()["batches"]
    texts = after["text"]["items"] - before["text"]["items"]
    batches = after["text"]["batches"] - before["text"]["batches"]
    assert texts == 30 and batches < texts  # concurrent queries shared model calls


@pytest.mark.parametrize(
    "request_kwargs, status, message",
    [
        ({"method": "POST", "url": "/embed/image", "files": {"image": ("x.png", b"not an image at all", "image/png")}},
         400, "unreadable image"),
        ({"method": "POST", "url": "/embed/image", "files": {"image": ("big.png", b"\0" * (50 * 2**20), "image/png")}},
         413, "over the limit of 4 MB"),
        ({"method": "POST", "url": "/search", "json": {"query": ""}}, 422, "query is empty"),
        ({"method": "POST", "url": "/embed/text", "json": {"texts": ["ok", "   "]}}, 422, "texts[1] is empty"),
        ({"method": "POST", "url": "/search", "content": b"{not json", "headers": {"content-type": "application/json"}},
         400, "not valid JSON"),
        ({"method": "POST", "url": "/search", "json": {"query": "red", "top_k": 100000}}, 422, "top_k must be between"),
        ({"method": "POST", "url": "/vqa", "files": {"image": ("x.png", png(), "image/png")}}, 422, "question must be a string"),
        ({"method": "POST", "url": "/embed/image", "content": b"x", "headers": {"content-type": "text/plain"}}, 415, "multipart"),
        ({"method": "GET", "url": "/media/999"}, 404, "no item 999"),
    ],
)  # fmt: skip
def test_malformed_input_is_a_4xx_with_a_message_and_the_server_keeps_serving(
    server, request_kwargs, status, message
):
    response = server.request(**request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert server.get("/health").status_code == 200
    assert server.post("/search", json={"query": "a red circle"}).status_code == 200


def test_a_model_without_the_head_says_so(tiny_run):
    with running(load_service(tiny_run, device="cpu")) as url:
        answer = httpx.post(
            f"{url}/vqa", files={"image": ("x.png", png(), "image/png")}, data={"question": "why?"}
        )
        assert answer.status_code == 400 and "has no VQA head" in answer.json()["error"]
        # no index made from these weights yet: /search says how to get one
        found = httpx.post(f"{url}/search", json={"query": "a red circle"})
        assert found.status_code == 400 and "--index" in found.json()["error"]
        assert httpx.get(f"{url}/health").json()["index"] is None


def test_scl_serve_command_starts_answers_and_stops(heads_ckpt, index):
    proc = subprocess.Popen(
        [sys.executable, "-m", "scl_cli.cli", "serve", "--ckpt", str(heads_ckpt), "--index", str(index), "--port", "0",
         "--device", "cpu", "--plain"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "CI": "1"},
    )  # fmt: skip
    try:
        url, lines, deadline = None, [], time.time() + 240
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            if found := re.search(r"on (http://127\.0\.0\.1:\d+)/", line):
                url = found.group(1)
        assert url is not None, "".join(lines)
        for _ in range(100):
            try:
                health = httpx.get(f"{url}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health.json()["heads"] == ["vqa", "nlvr2", "rank"]
        assert httpx.post(f"{url}/search", json={"query": "a red circle"}, timeout=60).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_listening_socket_is_tcp_so_responses_are_not_delayed():
    """asyncio sets TCP_NODELAY only on sockets whose proto says TCP; with proto 0 every keep-alive
    response waited for a delayed ACK (~40 ms instead of ~1 ms for /health)."""
    from scl_cli.engines.serve import listen

    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
