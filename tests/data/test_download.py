"""The downloader against a real HTTP server on 127.0.0.1: every failure has its reason, transient
ones are retried a bounded number of times, final ones are not retried."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from scl_cli.data.download import Fetcher, FetchError, FetchSettings, looks_like_image, map_threads

from .http_fixture import SLOW_SECONDS, ImageServer
from .realdata import jpeg

SETTINGS = FetchSettings(timeout=0.5, retries=1, backoff=0.05, max_bytes=200_000)


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as running:
        yield running


def reason(fetcher: Fetcher, url: str) -> str:
    with pytest.raises(FetchError) as caught:
        fetcher.fetch(url)
    return caught.value.reason


def test_good_and_redirected_images(server: ImageServer) -> None:
    fetcher = Fetcher(SETTINGS)
    assert fetcher.fetch(f"{server.url}/img/5.jpg") == jpeg(5)
    assert fetcher.fetch(f"{server.url}/redirect/6.jpg?size=large") == jpeg(6)


@pytest.mark.parametrize(
    ("path", "expected", "requests"),
    [
        ("/missing.jpg", "http_404", 1),  # final: not retried
        ("/gone.jpg", "http_410", 1),
        ("/page.jpg", "bad_content_type", 1),
        ("/fake.jpg", "not_an_image", 1),
        ("/huge.jpg", "too_large", 1),  # refused from its Content-Length
        ("/huge-stream.jpg", "too_large", 1),  # cut off while streaming
        ("/truncated.jpg", "truncated", 2),  # transient: retried once
    ],
)
def test_failures_have_reasons_and_bounded_requests(server: ImageServer, path: str, expected: str,
                                                    requests: int) -> None:  # fmt: skip
    assert reason(Fetcher(SETTINGS), f"{server.url}{path}") == expected
    assert server.counts[path] == requests


def test_timeout_is_retried_with_backoff_then_given_up(server: ImageServer) -> None:
    started = time.monotonic()
    assert reason(Fetcher(SETTINGS), f"{server.url}/slow.jpg") == "timeout"
    elapsed = time.monotonic() - started
    assert server.counts["/slow.jpg"] == 2
    assert 2 * SETTINGS.timeout <= elapsed < 2 * SETTINGS.timeout + 1.0 < 2 * SLOW_SECONDS


def test_transient_error_then_success(server: ImageServer) -> None:
    assert Fetcher(SETTINGS).fetch(f"{server.url}/flaky.jpg") == jpeg(3)
    assert server.counts["/flaky.jpg"] == 2


def test_unreachable_and_malformed_urls() -> None:
    fetcher = Fetcher(FetchSettings(timeout=0.5, retries=0))
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert reason(fetcher, f"http://127.0.0.1:{port}/nothing-listens-here.jpg") == "connection_error"
    assert reason(fetcher, "ftp://example.org/a.jpg") == "bad_url"
    assert reason(fetcher, "not a url") == "bad_url"


def test_concurrent_fetches_keep_order(server: ImageServer) -> None:
    fetcher = Fetcher(SETTINGS, connections=8)
    urls = [f"{server.url}/img/{n}.jpg" for n in range(12)]
    assert list(map_threads(fetcher.fetch, urls, threads=8)) == [jpeg(n) for n in range(12)]


def test_magic_numbers() -> None:
    assert looks_like_image(jpeg(1)) and looks_like_image(b"RIFF\0\0\0\0WEBPVP8 ")
    assert not looks_like_image(b"<!doctype html>")
