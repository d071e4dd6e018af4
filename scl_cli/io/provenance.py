"""Where a run came from: the git commit of the code (and whether its tree had uncommitted
changes), the versions of the packages that decide its numbers, and the machine."""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
import sys
from pathlib import Path

PACKAGES = ("scl-cli", "torch", "torchvision", "numpy", "transformers", "tokenizers", "timm", "pillow",
            "safetensors", "webdataset", "decord", "av", "faiss-cpu")  # fmt: skip
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def git_state(path: Path = PACKAGE_DIR) -> dict[str, object]:
    """`{"commit", "dirty"}` of the git checkout holding `path` (scl's own code by default); both
    None when it is not one (an installed wheel) or git is missing. Untracked files (runs, data)
    do not make a tree dirty."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, str]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.machine(),
    }
