"""Fetch image URLs: the downloader stage of `scl prepare` (CC3M, SBU).

One `Fetcher` per process holds a urllib3 connection pool (keep-alive per host, thread-safe).
Each URL gets up to `1 + retries` GET requests: connection errors, timeouts, truncated bodies,
HTTP 429 and 5xx are retried after an exponential back-off (honouring Retry-After); 4xx, a
wrong content type, an oversized body and bytes that are no image are final. A failure raises
`FetchError` whose `reason` goes into the manifest: `http_404`, `timeout`, `connection_error`,
`truncated`, `too_large`, `bad_content_type`, `not_an_image`, `bad_url`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from scl_cli import __version__

T = TypeVar("T")
R = TypeVar("R")
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Magic numbers of the formats PIL decodes that image hosts serve.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
_ACCEPTED_TYPES = ("image/", "video/", "application/octet-stream", "binary/octet-stream")


class FetchError(Exception):
    """A URL that gave no image; `reason` names the cause, `retryable` whether another try may help."""

    def __init__(self, reason: str, detail: str = "", retryable: bool = False) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.retryable = reason, retryable


@dataclass(frozen=True)
class FetchSettings:
    """`timeout`: seconds for connecting and for each read (the whole body gets 4x); `retries`:
    extra tries for transient failures, `backoff` seconds before the first, doubling each time;
    `max_bytes`: larger bodies are refused."""

    timeout: float = 10.0
    retries: int = 2
    backoff: float = 1.0
    max_bytes: int = 20 * 1024 * 1024
    user_agent: str = f"scl-prepare/{__version__} (+https://github.com/IIGROUP/SCL)"


def looks_like_image(data: bytes) -> bool:
    """An image, or a video clip (WebVid-style URL lists point at MP4 files): MP4/MOV `ftyp`,
    Matroska/WebM EBML, AVI."""
    return (
        data.startswith(_MAGIC)
        or (data[:4] == b"RIFF" and data[8:12] in (b"WEBP", b"AVI "))
        or data[4:8] == b"ftyp"
        or data.startswith(b"\x1a\x45\xdf\xa3")
    )


class Fetcher:
    """Downloads image bytes with `settings`; safe to share between threads."""

    def __init__(self, settings: FetchSettings, connections: int = 16) -> None:
        self.settings = settings
        self.pool = urllib3.PoolManager(
            num_pools=64,
            maxsize=connections,
            block=False,
            headers={"User-Agent": settings.user_agent, "Accept": "image/*"},
            timeout=urllib3.Timeout(connect=settings.timeout, read=settings.timeout),
            # Redirects are followed (5 at most); every other retry is ours, below.
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5),
        )
        self._jitter = random.Random()
        self._lock = threading.Lock()

    def fetch(self, url: str) -> bytes:
        """The body of `url` (checked to be an image), or `FetchError`."""
        attempt = 0
        while True:
            try:
                return self._attempt(url)
            except FetchError as err:
                if not err.retryable or attempt >= self.settings.retries:
                    raise
                wait = getattr(err, "retry_after", None)
                if wait is None:
                    with self._lock:
                        wait = self.settings.backoff * 2**attempt * (0.75 + 0.5 * self._jitter.random())
                time.sleep(min(wait, 60.0))
                attempt += 1

    def _attempt(self, url: str) -> bytes:
        if not url.lower().startswith(("http://", "https://")):
            raise FetchError("bad_url", url[:100])
        try:
            response = self.pool.request("GET", url, preload_content=False)
        except MaxRetryError as err:
            # urllib3's NewConnectionError (refused, no route) subclasses ConnectTimeoutError.
            if isinstance(err.reason, NewConnectionError):
                raise FetchError("connection_error", str(err.reason), retryable=True) from err
            if isinstance(err.reason, ConnectTimeoutError | ReadTimeoutError):
                raise FetchError("timeout", str(err.reason), retryable=True) from err
            if "redirect" in str(err).lower():
                raise FetchError("too_many_redirects") from err
            raise FetchError("connection_error", str(err.reason), retryable=True) from err
        except NewConnectionError as err:
            raise FetchError("connection_error", str(err), retryable=True) from err
        except (ConnectTimeoutError, ReadTimeoutError) as err:
            raise FetchError("timeout", str(err), retryable=True) from err
        except (LocationParseError, ValueError) as err:
            raise FetchError("bad_url", str(err)) from err
        except HTTPError as err:
            raise FetchError("connection_error", str(err), retryable=True) from err
        try:
            return self._body(response)
        finally:
            response.release_conn()

    def _body(self, response: urllib3.BaseHTTPResponse) -> bytes:
        status = response.status
        if status != 200:
            error = FetchError(f"http_{status}", retryable=status in RETRY_STATUS)
            retry_after = response.headers.get("Retry-After", "")
            if retry_after.isdigit():
                error.retry_after = float(retry_after)  # type: ignore[attr-defined]
            response.drain_conn()
            raise error
        content_type = response.headers.get("Content-Type", "").lower().strip()
        if content_type and not content_type.startswith(_ACCEPTED_TYPES):
            raise FetchError("bad_content_type", content_type)
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.settings.max_bytes:
            raise FetchError("too_large", f"Content-Length {length}")
        data = self._read_capped(response)
        if not looks_like_image(data):
            raise FetchError("not_an_image", f"{len(data)} bytes starting {data[:8]!r}")
        return data

    def _read_capped(self, response: urllib3.BaseHTTPResponse) -> bytes:
        deadline = time.monotonic() + 4 * self.settings.timeout
        chunks, size = [], 0
        try:
            for chunk in response.stream(64 * 1024):
                size += len(chunk)
                if size > self.settings.max_bytes:
                    raise FetchError("too_large", f"more than {self.settings.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise FetchError("timeout", "body too slow", retryable=True)
                chunks.append(chunk)
        except ReadTimeoutError as err:
            raise FetchError("timeout", str(err), retryable=True) from err
        except ProtocolError as err:
            raise FetchError("truncated", str(err), retryable=True) from err
        except HTTPError as err:
            raise FetchError("connection_error", str(err), retryable=True) from err
        return b"".join(chunks)


_fetchers: dict[tuple[FetchSettings, int], Fetcher] = {}


def fetcher_for(settings: FetchSettings, connections: int = 16) -> Fetcher:
    """This process's `Fetcher` for `settings` (connection pools are reused across shards)."""
    key = (settings, connections)
    if key not in _fetchers:
        _fetchers[key] = Fetcher(settings, connections)
    return _fetchers[key]


def map_threads(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """`map(fn, items)` over `threads` threads, results in input order."""
    if threads <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(threads)
    try:
        yield from pool.map(fn, items)
    finally:  # on Ctrl-C, do not wait for queued downloads
        pool.shutdown(wait=False, cancel_futures=True)
