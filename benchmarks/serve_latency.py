"""Latency of `scl serve`: p50 / p99 per endpoint, one request at a time and under concurrent load.

    .venv/bin/python benchmarks/serve_latency.py --ckpt RUN [--index INDEX] [--requests 200] [--concurrency 1,16]

The server runs as its own process (`scl serve --port 0`), as a user starts it; the client sends
requests with httpx from this process. Without --ckpt, a small model is made first in --workdir
(shapes data, a short `recipes/tiny.toml` run, an index of the test split), and a copy with a
random VQA head (latency only: its answers mean nothing) serves /vqa. Prints a table and, with
--json, writes the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCL = [sys.executable, "-m", "scl_cli.cli"]


def run(*args: str) -> None:
    print("$ scl " + " ".join(args), flush=True)
    subprocess.run([*SCL, *args], check=True, cwd=ROOT, env={**os.environ, "CI": "1"})


def make_model(workdir: Path) -> tuple[Path, Path]:
    """A short tiny run with a random VQA head (save_pretrained folder) and its index."""
    data, run_dir, model, index = workdir / "data", workdir / "run", workdir / "model", workdir / "index"
    if not (data / "shapes" / "manifest.json").is_file():
        run("prepare", "shapes", "--out", str(data), "--images", "400", "--clips", "0")
    if not (run_dir / "checkpoints").is_dir():
        run("pretrain", "recipes/tiny.toml", "--set", f'data.root="{data}"', "--set", f'output.dir="{run_dir}"',
            "--set", "optim.max_steps=20", "--plain")  # fmt: skip
    if not (model / "config.json").is_file():
        import torch

        import scl_cli as scl
        from scl_cli.model.task_heads import add_vqa_head

        loaded = scl.load(run_dir, device="cpu")
        torch.manual_seed(0)
        add_vqa_head(loaded.module, 16)
        loaded.answers = [f"answer {i}" for i in range(16)]
        loaded.save_pretrained(model)
    if not (index / "info.json").is_file():
        run("index", "--ckpt", str(model), "--data", str(data / "shapes"), "--split", "test", "--out", str(index), "--plain")
    return model, index


def start_server(ckpt: Path, index: Path | None, device: str) -> tuple[subprocess.Popen, str]:
    args = [*SCL, "serve", "--ckpt", str(ckpt), "--port", "0", "--device", device, "--plain"]
    args += ["--index", str(index)] if index else []
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "CI": "1"})  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        print(line.rstrip(), flush=True)
        if found := re.search(r"on (http://[\d.]+:\d+)/", line):
            url = found.group(1)
            for _ in range(200):
                try:
                    httpx.get(f"{url}/health", timeout=5)
                    return proc, url
                except httpx.TransportError:
                    time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start")


def png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (160, 120), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buffer, "JPEG")
    return buffer.getvalue()


def request(client: httpx.AsyncClient, endpoint: str, i: int):
    if endpoint == "search":
        return client.post("/search", json={"query": f"a red circle and a blue square {i}", "top_k": 10})
    if endpoint == "search+rerank":
        return client.post("/search", json={"query": f"a red circle {i}", "top_k": 10, "rerank": 8})
    if endpoint == "embed_text":
        return client.post("/embed/text", json={"text": f"a small green triangle {i}"})
    if endpoint == "embed_image":
        return client.post("/embed/image", files={"image": (f"{i}.jpg", png(i), "image/jpeg")})
    return client.post("/vqa", files={"image": (f"{i}.jpg", png(i), "image/jpeg")}, data={"question": f"what colour is it {i}?"})


async def measure(url: str, endpoint: str, requests: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
        for i in range(3):  # warm-up
            await request(client, endpoint, i)

        async def one(i: int) -> None:
            nonlocal errors
            async with gate:
                t0 = time.perf_counter()
                response = await request(client, endpoint, i)
                latencies.append(time.perf_counter() - t0)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"endpoint": endpoint, "concurrency": concurrency, "requests": requests, "errors": errors,
            "p50_ms": 1e3 * statistics.median(ordered), "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "requests_per_s": requests / wall}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="checkpoint to serve (default: make a small one in --workdir)")
    parser.add_argument("--index", type=Path, help="index for /search (default: the newest made from --ckpt)")
    parser.add_argument("--workdir", type=Path, default=Path("serve-bench"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--endpoints", default="search,search+rerank,embed_text,embed_image,vqa")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    ckpt, index = (args.ckpt, args.index) if args.ckpt else make_model(args.workdir)
    proc, url = start_server(ckpt, index, args.device)
    rows = []
    try:
        health = httpx.get(f"{url}/health").json()
        endpoints = [e for e in args.endpoints.split(",") if e != "vqa" or "vqa" in health["heads"]]
        for endpoint in endpoints:
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                row = asyncio.run(measure(url, endpoint, args.requests, concurrency))
                rows.append(row)
                print(f"{endpoint:14s} concurrency {concurrency:3d}: p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  "
                      f"{row['requests_per_s']:7.1f} req/s  errors {row['errors']}", flush=True)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    report = {"checkpoint": str(ckpt), "device": health["device"], "index_count": (health["index"] or {}).get("count"),
              "cpu_count": os.cpu_count(), "rows": rows}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
