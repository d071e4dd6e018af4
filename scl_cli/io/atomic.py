"""Writes that are all or nothing: a file or folder appears under its final name only once it is
complete (written under a temporary name in the same folder, flushed, then renamed). A crash
leaves the previous version or a stray temporary, never a torn file."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def temporary_sibling(path: Path, tag: str = "") -> Path:
    """A name beside `path` for writing it: `.tmp-NAME[-tag]-RANDOM` (hidden, unique, same folder)."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{path.name}{'-' + tag if tag else ''}-{secrets.token_hex(4)}")


def atomic_write_bytes(path: Path, data: bytes, durable: bool = False) -> Path:
    """Write `data` to `path` atomically; `durable` also fsyncs the file and its folder."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path, text: str, durable: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_write_json(path: Path, data: Any, durable: bool = False, **dump: Any) -> Path:
    """`data` as JSON (indent 2 and a final newline unless `dump` says otherwise)."""
    dump.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(data, **dump) + "\n", durable)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` for a writer that needs a file name (numpy, faiss,
    tar); renamed to `path` when the block ends without an error, deleted otherwise."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: Path, replace: bool = False, durable: bool = False) -> Iterator[Path]:
    """Yields an empty temporary folder beside `path`; renamed to `path` when the block ends
    without an error (removed otherwise). An existing `path` is an error unless `replace`: then it
    is moved aside, the new folder renamed in, and the old one deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if durable:
            fsync_dir(tmp)
        if path.exists() and not replace:
            raise FileExistsError(f"{path} already exists")
        swap_in(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(work: Path, path: Path) -> None:
    """Rename the finished folder `work` to `path`; an existing `path` is moved aside first
    (rename() cannot replace a non-empty folder) and deleted after."""
    if not path.exists():
        os.rename(work, path)
        return
    aside = temporary_sibling(path, "replaced")
    os.rename(path, aside)
    os.rename(work, path)
    shutil.rmtree(aside, ignore_errors=True)


def remove_directory(path: Path) -> None:
    """Delete a folder so that a crash midway never leaves it half-deleted under its own name."""
    path = Path(path)
    doomed = temporary_sibling(path, "deleting")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete what interrupted atomic writes left in `folder`."""
    for stale in Path(folder).glob(f"{TMP_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames in `path` durable on POSIX (folders cannot be opened this way on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
