"""A small image server on 127.0.0.1 for download tests: good images and every way a URL fails.

Routes (GET):
- `/img/<n>.jpg`: a JPEG; `/redirect/<n>.jpg`: 302 to it
- `/missing.jpg`: 404; `/gone.jpg`: 410
- `/slow.jpg`: sleeps `SLOW_SECONDS` before answering (longer than the clients' timeouts)
- `/page.jpg`: 200 with text/html; `/fake.jpg`: 200 image/jpeg whose bytes are no image
- `/truncated.jpg`: Content-Length of a whole JPEG, half of it sent, then the connection closes
- `/huge.jpg`: Content-Length over any test's cap; `/huge-stream.jpg`: no length, streams past it
- `/flaky.jpg`: 503 with Retry-After: 0 on the first request, the image after
- `/delay/<n>.jpg`: an image after `delay` seconds (slows a prepare down so it can be interrupted)
Every request is counted per path in `counts`; the server stops when its `with` block ends.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .realdata import jpeg

SLOW_SECONDS = 1.5
HUGE = 64 * 1024 * 1024  # claimed length: over the 20 MiB default cap


class ImageServer:
    def __init__(self, delay: float = 0.0) -> None:
        self.counts: Counter[str] = Counter()
        self.delay = delay
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with server._lock:
                    server.counts[self.path] += 1
                try:
                    server.answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeouts): expected

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str = "image/jpeg",
              length: int | None = None, headers: dict[str, str] | None = None) -> None:  # fmt: skip
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        number = path.rsplit("/", 1)[-1].split(".")[0]
        if path.startswith("/img/"):
            self._send(h, 200, jpeg(int(number)))
        elif path.startswith("/delay/"):
            time.sleep(self.delay)
            self._send(h, 200, jpeg(int(number)))
        elif path.startswith("/redirect/"):
            h.send_response(302)
            h.send_header("Location", f"/img/{number}.jpg")
            h.send_header("Content-Length", "0")
            h.end_headers()
        elif path == "/missing.jpg":
            self._send(h, 404, b"not found", "text/plain")
        elif path == "/gone.jpg":
            self._send(h, 410, b"gone", "text/plain")
        elif path == "/slow.jpg":
            time.sleep(SLOW_SECONDS)
            self._send(h, 200, jpeg(1))
        elif path == "/page.jpg":
            self._send(h, 200, b"<html><body>Photo unavailable</body></html>", "text/html; charset=utf-8")
        elif path == "/fake.jpg":
            self._send(h, 200, b"GIF? no: plain text pretending to be an image")
        elif path == "/truncated.jpg":
            body = jpeg(2)
            self._send(h, 200, body[: len(body) // 2], length=len(body))
        elif path == "/huge.jpg":
            self._send(h, 200, b"\xff\xd8\xff" + b"\0" * 100, length=HUGE)
        elif path == "/huge-stream.jpg":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.end_headers()
            for _ in range(64):
                h.wfile.write(b"\xff" * 16384)
        elif path == "/flaky.jpg":
            if self.counts[h.path] == 1:
                self._send(h, 503, b"busy", "text/plain", headers={"Retry-After": "0"})
            else:
                self._send(h, 200, jpeg(3))
        else:
            self._send(h, 404, b"no route", "text/plain")
