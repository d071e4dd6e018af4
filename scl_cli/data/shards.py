"""WebDataset-style tar shards and the `manifest.json` that lists them.

A prepared data set is a folder `ROOT/NAME/` holding `manifest.json` and, per split, shards
`SPLIT/000000.tar`, `SPLIT/000001.tar`, ... Each shard holds samples as consecutive members
`KEY.EXT` (e.g. `train-000123.jpg`, `train-000123.json`). Shards are written byte-for-byte
reproducibly (fixed mtime, owner and order), so the same input gives the same sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from webdataset import TarWriter

from scl_cli.data.shard_cache import ShardReading
from scl_cli.errors import DataError
from scl_cli.io import remote
from scl_cli.io.atomic import atomic_write_json
from scl_cli.io.fingerprint import sha256_file

MANIFEST = "manifest.json"
SHARD_PATTERN = "{:06d}.tar"


class _HashingFile:
    """A write-only file that hashes what passes through, so a shard is hashed while written."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


class ShardWriter:
    """Writes samples into `directory/000000.tar`, `000001.tar`, ..., `shard_size` samples each.

    A sample is a dict `{"__key__": key, ext: bytes | str, ...}` (str is stored as UTF-8); its
    members are stored sorted by extension. Numbering starts at `first_shard`, so several writers
    can each produce part of a split. `shards` lists, per finished shard, `{"file", "samples",
    "sha256"}` with `file` relative to `relative_to` (the data set folder), ready for the manifest.
    """

    def __init__(
        self, directory: Path, shard_size: int, relative_to: Path | None = None, first_shard: int = 0
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.directory = Path(directory)
        self.shard_size = shard_size
        self.relative_to = Path(relative_to) if relative_to is not None else self.directory
        self.shards: list[dict[str, Any]] = []
        self._next_shard = first_shard
        self._file: BinaryIO | None = None
        self._hashing: _HashingFile | None = None
        self._tar: TarWriter | None = None
        self._path: Path | None = None
        self._count = 0
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, sample: dict[str, Any]) -> None:
        if self._tar is None:
            self._open()
        assert self._tar is not None
        self._tar.write({k: v.encode("utf-8") if isinstance(v, str) and k != "__key__" else v
                         for k, v in sample.items()})  # fmt: skip
        self._count += 1
        if self._count == self.shard_size:
            self._finish()

    def close(self) -> list[dict[str, Any]]:
        """Finish the last shard; returns the shard list."""
        if self._tar is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (its temporary file); finished shards stay."""
        if self._file is not None and self._path is not None:
            self._file.close()
            self._path.with_suffix(".tar.partial").unlink(missing_ok=True)
        self._tar = self._file = self._hashing = self._path = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        self._path = self.directory / SHARD_PATTERN.format(self._next_shard)
        self._next_shard += 1
        self._file = open(self._path.with_suffix(".tar.partial"), "wb")
        self._hashing = _HashingFile(self._file)
        # Empty owner names, uid/gid 0 and mtime 0 make the bytes independent of who ran it and when.
        self._tar = TarWriter(self._hashing, user="", group="", mode=0o444, encoder=False, mtime=0)
        self._count = 0

    def _finish(self) -> None:
        assert self._tar is not None and self._file is not None and self._hashing and self._path
        self._tar.close()
        self._file.close()
        os.replace(self._path.with_suffix(".tar.partial"), self._path)
        self.shards.append(
            {
                "file": self._path.relative_to(self.relative_to).as_posix(),
                "samples": self._count,
                "sha256": self._hashing.digest.hexdigest(),
            }
        )
        self._tar = self._file = self._hashing = self._path = None


def iter_tar_samples(
    path: Path | str, skip: int = 0, reading: ShardReading | None = None, sha256: str | None = None
) -> Iterator[dict[str, Any]]:
    """Samples of one shard in stored order: `{"__key__": key, ext: bytes, ...}`.

    The first `skip` samples are passed over without reading their data (headers only; a shard
    streamed from a URL reads past them). Members are grouped by the file name up to its first dot,
    as WebDataset does. `path` may be a URL: the shard is streamed with retries (`reading`, and
    its cache; `sha256` is the manifest's checksum), and a read that still fails raises
    `io.remote.RemoteError`.
    """
    if not remote.is_url(path):
        with tarfile.open(path, "r:") as tar:
            yield from _tar_samples(tar, skip)
        return
    source, seekable = (reading or ShardReading(remote.default_policy())).open(str(path), sha256)
    try:
        with tarfile.open(fileobj=source, mode="r:" if seekable else "r|") as tar:
            yield from _tar_samples(tar, skip)
        if hasattr(source, "finish"):
            source.finish()  # the rest of the stream (tar padding) and the cache entry
    finally:
        source.close()


def _tar_samples(tar: tarfile.TarFile, skip: int) -> Iterator[dict[str, Any]]:
    sample: dict[str, Any] | None = None
    seen = 0
    while (member := tar.next()) is not None:
        # Dropping the member list keeps memory flat on long shards.
        tar.members = []
        if not member.isfile():
            continue
        key, _, ext = member.name.partition(".")
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                if seen >= skip:
                    yield sample
                seen += 1
            sample = {"__key__": key}
        if seen >= skip:
            f = tar.extractfile(member)
            assert f is not None
            sample[ext] = f.read()
    if sample is not None and seen >= skip:
        yield sample


# ----------------------------------------------------------------------------- manifest
def write_manifest(dataset_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write `dataset_dir/manifest.json` atomically (temp file + rename); returns its path."""
    return atomic_write_json(Path(dataset_dir) / MANIFEST, manifest)


def _prepare_hint(dataset_dir: Path | str) -> str:
    if remote.is_url(dataset_dir):
        return f"check data.root / the data set's URL, or run `scl prepare {remote.basename(dataset_dir)} --out {remote.parent(dataset_dir)}`"
    dataset_dir = Path(dataset_dir)
    return f"run `scl prepare {dataset_dir.name} --out {dataset_dir.parent}`"


def read_manifest(dataset_dir: Path | str) -> dict[str, Any]:
    """The parsed `manifest.json` of a prepared data set (a folder or a URL); `DataError` naming the
    file when it is missing, unreadable or lacks `splits` (`io.remote.RemoteError` naming the URL
    and what failed for one behind a URL)."""
    if remote.is_url(dataset_dir):
        url = str(remote.join(dataset_dir, MANIFEST))
        try:
            text = remote.read_bytes(url).decode("utf-8")
        except remote.RemoteError as err:
            if err.status != 404 and "not found" not in str(err):
                raise
            raise remote.RemoteError(err.url, f"{str(err).split(': ', 1)[1]} — {_prepare_hint(dataset_dir)}",
                                     err.transient, err.status) from None  # fmt: skip
        except UnicodeDecodeError as err:
            raise DataError(f"{url}: unreadable ({err}) — {_prepare_hint(dataset_dir)}") from None
        return _parsed(text, url, dataset_dir)
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / MANIFEST
    if not dataset_dir.is_dir():
        raise DataError(f"{dataset_dir}: data set folder missing — {_prepare_hint(dataset_dir)}")
    if not path.is_file():
        raise DataError(f"{path}: missing — {_prepare_hint(dataset_dir)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({err}) — {_prepare_hint(dataset_dir)}") from err
    return _parsed(text, path, dataset_dir)


def _parsed(text: str, where: Path | str, dataset_dir: Path | str) -> dict[str, Any]:
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: unreadable ({err}) — {_prepare_hint(dataset_dir)}") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise DataError(f"{where}: no 'splits' table — {_prepare_hint(dataset_dir)}")
    return manifest


def split_entry(
    manifest: dict[str, Any], split: str, dataset_dir: Path | str, group: str = "splits"
) -> dict[str, Any]:
    """The `{"samples", "shards"}` entry of `split` in `manifest[group]`; `DataError` listing what
    exists when it is absent. `group` is "splits" or a task group such as "nlvr2"."""
    entries = manifest.get(group)
    where = remote.join(dataset_dir, MANIFEST)
    if not isinstance(entries, dict):
        raise DataError(f"{where}: no '{group}' table")
    if split not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise DataError(f"{where}: no split '{split}' in '{group}' (has: {known})")
    entry = entries[split]
    if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
        raise DataError(f"{where}: '{group}.{split}' has no shard list")
    return entry


def _all_shards(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for value in manifest.values():
        if isinstance(value, dict):
            for entry in value.values():
                if isinstance(entry, dict) and isinstance(entry.get("shards"), list):
                    yield from entry["shards"]


def verify_shards(dataset_dir: Path) -> list[str]:
    """Check every shard the manifest lists (all splits and task groups) against its sha256.

    Returns one line per problem (missing file, checksum mismatch); an empty list means intact.
    """
    dataset_dir = Path(dataset_dir)
    problems = []
    for shard in _all_shards(read_manifest(dataset_dir)):
        path = dataset_dir / shard["file"]
        if not path.is_file():
            problems.append(f"{path}: listed in {MANIFEST} but missing")
        elif shard.get("sha256") and sha256_file(path) != shard["sha256"]:
            problems.append(f"{path}: sha256 differs from {MANIFEST} (corrupt or rewritten)")
    return problems
