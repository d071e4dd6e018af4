"""A static file server on 127.0.0.1 for remote-shard tests (Python's `http.server` in a thread),
with options to fail: `fail_every=N` answers every Nth GET of a shard (`.tar`) with 503, `cut_every=N`
sends every Nth shard's body half-way and closes the connection. GET only, no ranges (the loader reads past the
start when it opens a stream again). `counts` holds the requests per path, `failures` the failed
ones; the server stops when its `with` block ends."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class ShardServer:
    def __init__(self, directory: Path, fail_every: int = 0, cut_every: int = 0) -> None:
        self.counts: Counter[str] = Counter()
        self.failures = 0
        self.requests = 0  # shard requests
        self._lock = threading.Lock()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with server._lock:
                    server.counts[self.path] += 1
                    shard = self.path.endswith(".tar")
                    server.requests += shard
                    number = server.requests if shard else 0
                if fail_every and number and number % fail_every == 0:
                    with server._lock:
                        server.failures += 1
                    self.send_error(503, "failing on purpose")
                    return
                if cut_every and number and number % cut_every == 0:
                    with server._lock:
                        server.failures += 1
                    self._send_half()
                    return
                try:
                    super().do_GET()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send_half(self) -> None:
                path = Path(self.translate_path(self.path))
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True

        handler = functools.partial(Handler, directory=str(directory))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> ShardServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
