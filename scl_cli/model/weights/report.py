"""What loading pretrained weights did (`LoadReport`), and the checks every mapping shares."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

from scl_cli.errors import CheckpointError

if TYPE_CHECKING:
    pass


_MAX_LISTED = 10


@dataclass
class LoadReport:
    """What a weight load did: every source key is in `mapped` or `ignored`.

    mapped: source key -> our key; ignored: source key -> why it is not used; new: our key -> why it
    keeps its initial value; notes: anything else worth telling (interpolation, slicing).
    """

    part: str
    source: str
    layout: str
    mapped: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    new: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: `vision: 152 tensors from X (openai-clip); 13 ignored; new: mask_token; ...`."""
        parts = [f"{self.part}: {len(self.mapped)} tensors from {self.source} ({self.layout})"]
        if self.ignored:
            reasons: dict[str, int] = {}
            for reason in self.ignored.values():
                reasons[reason] = reasons.get(reason, 0) + 1
            parts.append("ignored " + ", ".join(f"{n} ({r})" for r, n in reasons.items()))
        if self.new:
            parts.append("new " + ", ".join(self.new))
        return "; ".join(parts + self.notes)


# ----------------------------------------------------------------------------- shared checks
def check_and_cast(
    tensors: dict[str, Tensor],
    own: Mapping[str, Tensor],
    allowed_new: Mapping[str, str],
    report: LoadReport,
    source: str,
) -> dict[str, Tensor]:
    """Check names and shapes against the module's state dict; record what stays new; cast dtypes."""
    mismatched = [
        f"{k} {list(t.shape)} vs {list(own[k].shape)}" for k, t in tensors.items() if t.shape != own[k].shape
    ]
    if mismatched:
        raise CheckpointError(
            f"{source}: shapes do not fit the model (weights vs model): {format_keys(mismatched)}; "
            f"check the {report.part} sizes in the recipe (model.{report.part}.*)"
        )
    missing = [k for k in own if k not in tensors]
    lacking = [k for k in missing if k not in allowed_new]
    if lacking:
        raise CheckpointError(f"{source}: {report.part} weights lack {format_keys(lacking)}")
    for key in missing:
        report.new[key] = allowed_new[key]
    return {k: t.detach().to(own[k].dtype) for k, t in tensors.items()}


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading chatter (unused-weight notices): the report says it instead."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def offline_hint(field_name: str, example: str) -> str:
    return (
        f"download them once while online, or pass a local copy with --set {field_name}=PATH "
        f"({example}), or start from scratch with --set model.init=random"
    )


def format_keys(keys: list[str]) -> str:
    """`[a, b, ... 3 more]`: keys for a one-line error message."""
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"[{shown}{more}]"
