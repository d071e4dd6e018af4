"""Where data lives: a local folder (a `Path`) or a URL (`https://`, `s3://`, `gs://`, any fsspec
protocol; kept as a string, since `Path` would fold its `//`). Torch-free, like all of `config`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: object) -> bool:
    """True for `scheme://...` (a string; a `Path` is always local)."""
    return isinstance(location, str) and _SCHEME.match(location) is not None


def _location(value: Any) -> Any:
    if is_url(value):
        return value.rstrip("/") if not value.endswith("://") else value
    if isinstance(value, str):
        return Path(value)
    return value


Location = Annotated[Path | str, BeforeValidator(_location)]
"""A recipe field holding a folder or a URL: `Path` for the first, `str` for the second."""
