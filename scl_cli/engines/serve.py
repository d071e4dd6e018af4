"""Engine of `scl serve`: a trained model (and optionally an index) behind HTTP on FastAPI +
uvicorn (`serving.app`: the endpoints; `serving.service`: what they do)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scl_cli.errors import UsageError
from scl_cli.inference import SCL
from scl_cli.inference.hub import resolve_source
from scl_cli.reporting import NullReporter, Reporter
from scl_cli.search.retriever import Retriever
from scl_cli.search.store import checkpoint_id, find_indexes
from scl_cli.serving.app import create_app
from scl_cli.serving.batching import ServeLimits
from scl_cli.serving.service import Service


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
            reporter.warn(
                f"no index made from {ckpt}: /search is off (make one with `scl index`, or pass --index)"
            )
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

    config = uvicorn.Config(
        create_app(service), log_level=log_level, access_log=False, timeout_graceful_shutdown=5
    )
    return uvicorn.Server(config)


@contextlib.contextmanager
def running(
    service: Service, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> Iterator[str]:
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
