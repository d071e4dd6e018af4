"""One reader per data set: official files in, `Record`s and `Skip`s out (see `base`).

A reader is a function `read(SourceRequest) -> SourceData` in one module, made known to
`scl prepare NAME` by an entry point in the `scl_cli.sources` group (this package's readers are
declared in `pyproject.toml`; another package declares its own)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from scl_cli.data.sources.base import SourceData, SourceRequest

ENTRY_POINT_GROUP = "scl_cli.sources"
Reader = Callable[[SourceRequest], SourceData]


def reader_names() -> list[str]:
    """The data sets `scl prepare` can read, in declaration order."""
    return list(dict.fromkeys(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)))


def reader(name: str) -> Reader:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise KeyError(name)
