"""Content fingerprints: sha256 of files, whole or sampled."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_WINDOW = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_WINDOW), b""):
            digest.update(block)
    return digest.hexdigest()


def sampled_windows(path: Path) -> Iterable[bytes]:
    """The file's size, then its first, middle and last MiB: enough to tell large weight files
    apart while reading at most 3 MiB."""
    size = Path(path).stat().st_size
    yield size.to_bytes(8, "little")
    with open(path, "rb") as f:
        for start in sorted({0, max(0, size // 2 - _WINDOW // 2), max(0, size - _WINDOW)}):
            f.seek(start)
            yield f.read(_WINDOW)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
