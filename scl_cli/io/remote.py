"""Files behind URLs, read and written with retries: `http(s)://` through urllib3 (a ranged GET
where the server allows it), every other protocol (`s3://`, `gs://`, `memory://`, `file://`, ...)
through fsspec, when the protocol's package is installed (`s3fs`, `gcsfs`: the `s3`/`gcs` extras).

- A transient failure (connection refused or reset, timeout, a body cut short, HTTP 408/425/429/5xx,
  a throttled object store) is retried `retries` times with exponential back-off (0.25 s, 0.5 s, ...,
  at most 8 s); a stream opens again at the byte it had reached. Each retry is counted in this
  process (`retry_count`): the training loader reports them in the metrics.
- Anything else (not found, access denied, no credentials, no package for the protocol), or a
  transient failure that outlasts its retries, is a `RemoteError`: one line naming the URL and
  what failed.

Connections are per process (a forked loader worker opens its own).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from scl_cli.config.location import is_url
from scl_cli.errors import DataError

BACKOFF_MAX = 8.0
CHUNK = 1 << 20
# Packages of the protocols users ask for most, and the extra that installs each.
PROTOCOL_PACKAGES = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
}
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_TRANSIENT_NAMES = ("Timeout", "Connection", "Protocol", "IncompleteRead", "Throttl", "SlowDown",
                    "ServiceUnavailable", "ResponseStreaming", "EndpointConnection", "RemoteDisconnected")  # fmt: skip

__all__ = [
    "RemoteError",
    "RetryPolicy",
    "basename",
    "configure",
    "is_url",
    "join",
    "open_stream",
    "read_bytes",
]


class RemoteError(DataError):
    """A read or write of `url` that failed (for good, or after its retries)."""

    def __init__(self, url: str, what: str, transient: bool = False, status: int | None = None) -> None:
        super().__init__(f"{url}: {what}")
        self.url, self.transient, self.status = url, transient, status


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one read or write and its back-off; `timeout`: seconds without data."""

    retries: int = 5
    timeout: float = 60.0
    backoff: float = 0.25


_policy = RetryPolicy()
_retries = 0
_lock = threading.Lock()
_stores: dict[tuple[int, str], Store] = {}


def configure(policy: RetryPolicy) -> None:
    """The policy of this process's reads that name none (a recipe's data.read_retries/read_timeout)."""
    global _policy
    _policy = policy


def default_policy() -> RetryPolicy:
    return _policy


def retry_count() -> int:
    """Retries this process made so far (all URLs)."""
    return _retries


def _count_retry() -> None:
    global _retries
    with _lock:
        _retries += 1


# ----------------------------------------------------------------------------- locations
def join(base: Path | str, *parts: str) -> Path | str:
    """`base/part/...`: a `Path` for a folder, a string for a URL. A part that is itself a URL or an
    absolute path is a location of its own and replaces what comes before it."""
    location: Path | str = base
    for part in parts:
        if is_url(part) or Path(part).is_absolute():
            location = part if is_url(part) else Path(part)
        elif is_url(location):
            location = f"{str(location).rstrip('/')}/{part.strip('/')}"
        else:
            location = Path(location) / part
    return location


def basename(location: Path | str) -> str:
    """The last component of a folder or URL."""
    return str(location).rstrip("/").rsplit("/", 1)[-1] if is_url(location) else Path(location).name


def parent(location: Path | str) -> Path | str:
    return str(location).rstrip("/").rsplit("/", 1)[0] if is_url(location) else Path(location).parent


# ----------------------------------------------------------------------------- stores
class Store(Protocol):
    def open(self, url: str, offset: int) -> Any: ...
    def read_bytes(self, url: str) -> bytes: ...
    def size(self, url: str) -> int | None: ...
    def put(self, local: Path, url: str) -> None: ...
    def remove(self, url: str) -> None: ...


class _HTTPStore:
    """GET with urllib3; no retries of its own (this module retries)."""

    def __init__(self, timeout: float) -> None:
        import urllib3

        retry = urllib3.Retry(
            total=None, connect=0, read=0, status=0, other=0, redirect=5, raise_on_status=False
        )
        self.pool = urllib3.PoolManager(
            num_pools=8,
            maxsize=8,
            retries=retry,
            timeout=urllib3.Timeout(connect=min(timeout, 30.0), read=timeout),
        )

    def _get(self, url: str, headers: dict[str, str] | None = None) -> Any:
        response = self.pool.request(
            "GET", url, headers=headers or {}, preload_content=False, decode_content=False
        )
        if response.status >= 400:
            reason = response.reason or ""
            response.release_conn()
            raise RemoteError(url, f"HTTP {response.status} {reason}".strip(), response.status in _TRANSIENT_STATUS,
                              response.status)  # fmt: skip
        return response

    def open(self, url: str, offset: int) -> Any:
        response = self._get(url, {"Range": f"bytes={offset}-"} if offset else None)
        if offset and response.status != 206:  # the server ignored the range: read past the start
            left = offset
            while left:
                got = response.read(min(left, CHUNK))
                if not got:
                    raise RemoteError(url, f"ended before byte {offset}", transient=True)
                left -= len(got)
        return _HTTPBody(response)

    def read_bytes(self, url: str) -> bytes:
        body = self.open(url, 0)
        try:
            return body.read()
        finally:
            body.close()

    def size(self, url: str) -> int | None:
        response = self.pool.request("HEAD", url)
        if response.status == 404:
            return None
        if response.status >= 400:
            raise RemoteError(url, f"HTTP {response.status} {response.reason or ''}".strip(),
                              response.status in _TRANSIENT_STATUS, response.status)  # fmt: skip
        length = response.headers.get("Content-Length")
        return int(length) if length is not None else None

    def put(self, local: Path, url: str) -> None:
        raise RemoteError(url, "HTTP(S) is read-only here — write to s3://, gs:// or another fsspec protocol, "
                          "then serve that over HTTP")  # fmt: skip

    def remove(self, url: str) -> None:
        self.put(Path(), url)


class _HTTPBody:
    def __init__(self, response: Any) -> None:
        self.response = response
        self.done = False

    def read(self, size: int = -1) -> bytes:
        data = self.response.read(None if size is None or size < 0 else size)
        if not data or size is None or size < 0:
            self.done = True
        return data

    def close(self) -> None:
        if self.done:
            self.response.release_conn()
        else:  # unread bytes: the connection cannot be reused
            self.response.close()


class _FsspecStore:
    def __init__(self, protocol: str, url: str) -> None:
        try:
            import fsspec

            self.fs = fsspec.filesystem(protocol)
        except (ImportError, ValueError) as err:
            package, extra = PROTOCOL_PACKAGES.get(protocol, (None, None))
            hint = (f"pip install 'scl-cli[{extra}]' (or {package})" if package
                    else f"install the fsspec implementation of '{protocol}://'")  # fmt: skip
            raise RemoteError(
                url, f"cannot read '{protocol}://' URLs here ({_one_line(err)}) — {hint}"
            ) from None

    def open(self, url: str, offset: int) -> Any:
        f = self.fs.open(url, "rb")
        if offset:
            f.seek(offset)
        return f

    def read_bytes(self, url: str) -> bytes:
        return self.fs.cat_file(url)

    def size(self, url: str) -> int | None:
        try:
            return int(self.fs.size(url))
        except FileNotFoundError:
            return None

    def put(self, local: Path, url: str) -> None:
        self.fs.makedirs(str(parent(url)), exist_ok=True)
        self.fs.put_file(str(local), url)

    def remove(self, url: str) -> None:
        try:
            self.fs.rm_file(url)
        except FileNotFoundError:
            pass


def store_for(url: str, policy: RetryPolicy | None = None) -> Store:
    """The store of `url`'s protocol in this process (`RemoteError` when none can be had)."""
    protocol = url.split("://", 1)[0].lower()
    key = (os.getpid(), protocol)
    store = _stores.get(key)
    if store is None:
        if protocol in ("http", "https"):
            store = _HTTPStore((policy or _policy).timeout)
        else:
            store = _FsspecStore(protocol, url)
        _stores[key] = store
    return store


# ----------------------------------------------------------------------------- errors, retries
def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if text.startswith("<") and ">: " in text:  # urllib3's "<...Connection object at 0x..>: why"
        text = text.split(">: ", 1)[1]
    return text[:300] or type(err).__name__


def _cause(err: BaseException) -> BaseException:
    reason = getattr(err, "reason", None)  # urllib3's MaxRetryError wraps what happened
    return reason if isinstance(reason, BaseException) else err


def is_transient(err: BaseException) -> bool:
    """Worth retrying: the same request may well succeed in a moment."""
    err = _cause(err)
    if isinstance(err, RemoteError):
        return err.transient
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    if any(key in type(err).__name__ for key in _TRANSIENT_NAMES):
        return True
    status = getattr(err, "status", None) or getattr(err, "status_code", None)
    if isinstance(status, int):
        return status in _TRANSIENT_STATUS
    return isinstance(err, OSError)


def describe(err: BaseException) -> str:
    """What failed, in a few words: `ConnectionRefusedError: [Errno 111] Connection refused`."""
    err = _cause(err)
    if isinstance(err, RemoteError):
        return str(err).split(": ", 1)[-1]
    if isinstance(err, FileNotFoundError):
        return "not found"
    if isinstance(err, PermissionError):
        return f"access denied ({_one_line(err)}) — check the credentials and the bucket's permissions"
    name = type(err).__name__
    if "Credential" in name:
        return (
            f"no credentials ({_one_line(err)}) — set them as the storage library expects (e.g. AWS_* or "
            "GOOGLE_APPLICATION_CREDENTIALS)"
        )
    return f"{name}: {_one_line(err)}"


def _retrying(url: str, action: Any, policy: RetryPolicy, what: str) -> Any:
    attempt = 0
    while True:
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - every library raises its own; classified below
            transient = is_transient(err)
            if not transient or attempt >= policy.retries:
                after = f" after {attempt} retr{'y' if attempt == 1 else 'ies'}" if attempt else ""
                status = getattr(_cause(err), "status", None)
                raise RemoteError(url, f"{what} failed{after}: {describe(err)}", transient,
                                  status if isinstance(status, int) else None) from None  # fmt: skip
            _count_retry()
            time.sleep(min(policy.backoff * 2**attempt, BACKOFF_MAX))
            attempt += 1


def read_bytes(url: str, policy: RetryPolicy | None = None) -> bytes:
    """The whole object at `url` (small files: manifests, tokenizers)."""
    policy = policy or _policy
    return _retrying(url, lambda: store_for(url, policy).read_bytes(url), policy, "read")


def size(url: str, policy: RetryPolicy | None = None) -> int | None:
    """Bytes of the object at `url`, None when there is none."""
    policy = policy or _policy
    return _retrying(url, lambda: store_for(url, policy).size(url), policy, "size query")


def upload(local: Path, url: str, policy: RetryPolicy | None = None) -> None:
    policy = policy or _policy
    _retrying(url, lambda: store_for(url, policy).put(Path(local), url), policy, "upload")


def remove(url: str, policy: RetryPolicy | None = None) -> None:
    policy = policy or _policy
    _retrying(url, lambda: store_for(url, policy).remove(url), policy, "delete")


class RetryingStream:
    """A forward-only binary stream of `url` that survives transient failures: it opens the object
    again at the byte it had reached (a ranged read, or reading past the start where the server
    cannot do ranges) after a back-off, up to `policy.retries` times in a row."""

    def __init__(self, url: str, policy: RetryPolicy | None = None) -> None:
        self.url = url
        self.policy = policy or _policy
        self.offset = 0
        self._f: Any = None
        self._f = _retrying(url, lambda: store_for(url, self.policy).open(url, 0), self.policy, "open")

    def read(self, size: int = -1) -> bytes:
        attempt = 0
        while True:
            try:
                if self._f is None:
                    self._f = store_for(self.url, self.policy).open(self.url, self.offset)
                data = self._f.read(size)
                self.offset += len(data)
                return data
            except Exception as err:  # noqa: BLE001 - classified as in _retrying
                self._drop()
                if not is_transient(err) or attempt >= self.policy.retries:
                    after = f" after {attempt} retr{'y' if attempt == 1 else 'ies'}" if attempt else ""
                    raise RemoteError(self.url, f"read failed at byte {self.offset}{after}: {describe(err)}",
                                      is_transient(err)) from None  # fmt: skip
                _count_retry()
                time.sleep(min(self.policy.backoff * 2**attempt, BACKOFF_MAX))
                attempt += 1

    def _drop(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close too
                pass

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> RetryingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stream(url: str, policy: RetryPolicy | None = None) -> RetryingStream:
    return RetryingStream(url, policy)


def upload_tree(
    local: Path, url: str, last: tuple[str, ...] = (), policy: RetryPolicy | None = None
) -> tuple[int, int]:
    """Mirror folder `local` to `url`: every file whose remote copy is missing or of another size is
    uploaded (so a re-run after an interruption sends only what is left); the files named in `last`
    are deleted remotely first and uploaded at the end, so the remote folder never shows them
    beside an incomplete rest. Temporaries of interrupted writes (`.tmp-*`) are left out.
    Returns (files uploaded, files already there)."""
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file() and not any(
        part.startswith(".tmp-") for part in p.relative_to(local).parts))  # fmt: skip
    for name in last:
        remove(str(join(url, name)), policy)
    sent = kept = 0
    ordered = [p for p in files if p.relative_to(local).as_posix() not in last]
    ordered += [p for p in files if p.relative_to(local).as_posix() in last]
    for path in ordered:
        target = str(join(url, *path.relative_to(local).parts))
        if path.relative_to(local).as_posix() not in last and size(target, policy) == path.stat().st_size:
            kept += 1
            continue
        upload(path, target, policy)
        sent += 1
    return sent, kept
