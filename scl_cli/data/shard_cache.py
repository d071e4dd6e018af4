"""Reading shards that live behind a URL: streamed with retries (`io.remote`), and optionally kept
in a local, size-bounded cache for the next epochs and runs (`data.cache_dir`).

The cache is one folder shared by every loader worker, process and run that names it:
- an entry is `DIR/<sha256>.tar`, keyed by the manifest's checksum of the shard (by the URL when the
  manifest has none): a shard rewritten upstream is a new entry, never a stale hit;
- an entry is filled while the shard streams in (nothing waits for a whole download), under a
  temporary name beside it (`io.atomic.temporary_sibling`), and renamed in only once the whole
  shard arrived with the manifest's checksum; two processes filling the same entry write the same
  bytes and the later rename wins;
- a hit sets the entry's mtime (recently used); after each new entry the least recently used
  entries are deleted until the folder holds at most `max_bytes`, one process at a time (an
  exclusive `flock` of `DIR/.lock`). A reader that has an entry open keeps reading it after it is
  deleted (POSIX); temporaries older than an hour (a killed writer's) are deleted too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from scl_cli.io import remote
from scl_cli.io.atomic import TMP_PREFIX, temporary_sibling

LOCK = ".lock"
STALE_SECONDS = 3600


@dataclass(frozen=True)
class ShardCache:
    folder: Path
    max_bytes: int

    def entry(self, url: str, sha256: str | None) -> Path:
        key = sha256 or hashlib.sha256(url.encode("utf-8")).hexdigest()
        return Path(self.folder) / f"{key}.tar"

    def lookup(self, url: str, sha256: str | None) -> Path | None:
        path = self.entry(url, sha256)
        try:
            os.utime(path)  # most recently used
        except FileNotFoundError:
            return None
        return path

    def trim(self) -> None:
        """Delete least recently used entries until the folder holds at most `max_bytes`."""
        with self._locked():
            now = time.time()
            entries = []
            for path in Path(self.folder).iterdir():
                try:
                    info = path.stat()
                except FileNotFoundError:
                    continue
                if path.name.startswith(TMP_PREFIX):
                    if now - info.st_mtime > STALE_SECONDS:
                        path.unlink(missing_ok=True)
                elif path.suffix == ".tar":
                    entries.append((info.st_mtime, info.st_size, path))
            total = sum(size for _, size, _ in entries)
            for _, size, path in sorted(entries):
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        with open(Path(self.folder) / LOCK, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


class CachingStream:
    """Passes a stream through while writing its bytes to a temporary file beside the cache entry;
    `finish()` reads what is left and renames the file in when its sha256 is the expected one.
    A failing cache write (a full disk) stops the caching, never the read."""

    def __init__(self, source: Any, cache: ShardCache, path: Path, sha256: str | None) -> None:
        self.source, self.cache, self.path, self.sha256 = source, cache, path, sha256
        self.hash = hashlib.sha256()
        self.tmp: Path | None = temporary_sibling(path)
        try:
            Path(cache.folder).mkdir(parents=True, exist_ok=True)
            self.out: BinaryIO | None = open(self.tmp, "wb")
        except OSError:
            self.out, self.tmp = None, None

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        if self.out is not None and data:
            try:
                self.out.write(data)
                self.hash.update(data)
            except OSError:
                self._abandon()
        return data

    def finish(self) -> None:
        while self.read(remote.CHUNK):
            pass
        if self.out is None or self.tmp is None:
            return
        self.out.close()
        self.out = None
        if self.sha256 is None or self.hash.hexdigest() == self.sha256:
            try:
                os.replace(self.tmp, self.path)
                self.tmp = None
                self.cache.trim()
            except OSError:
                pass
        self._abandon()

    def _abandon(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None

    def close(self) -> None:
        self._abandon()
        self.source.close()


@dataclass(frozen=True)
class ShardReading:
    """How a loader reads shards behind URLs (picklable: it travels to the loader workers)."""

    policy: remote.RetryPolicy = field(default_factory=remote.RetryPolicy)
    cache: ShardCache | None = None

    @classmethod
    def from_settings(
        cls, retries: int, timeout: float, cache_dir: Path | None, cache_size_gb: float
    ) -> ShardReading:
        cache = ShardCache(Path(cache_dir), int(cache_size_gb * 1e9)) if cache_dir is not None else None
        return cls(remote.RetryPolicy(retries, timeout), cache)

    def open(self, url: str, sha256: str | None) -> tuple[Any, bool]:
        """(a readable binary object, whether it is a local file that can seek). A cached shard
        is its local file; else a retrying stream, filling the cache as it goes when there is one."""
        if self.cache is not None:
            hit = self.cache.lookup(url, sha256)
            if hit is not None:
                try:
                    return open(hit, "rb"), True
                except FileNotFoundError:  # evicted in between
                    pass
        stream = remote.open_stream(url, self.policy)
        if self.cache is None:
            return stream, False
        return CachingStream(stream, self.cache, self.cache.entry(url, sha256), sha256), False


def configure_remote(data: Any) -> ShardReading:
    """From a recipe's `[data]`: make its `read_retries`/`read_timeout` this process's policy for
    reads behind URLs (manifests, tokenizers), and return how the loader reads shards."""
    reading = ShardReading.from_settings(
        data.read_retries, data.read_timeout, data.cache_dir, data.cache_size_gb
    )
    remote.configure(reading.policy)
    return reading
