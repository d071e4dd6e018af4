"""Pre-training objectives, one module each, registered by name (see `registry`)."""

from scl_cli.objectives import itc, itm, mlm, nlvr2, rank, scl_global, scl_local, vqa  # noqa: F401  (registration)
from scl_cli.objectives.registry import (
    Objective,
    ObjectiveSettings,
    build_objectives,
    register,
    registered,
    validate_objectives,
)

__all__ = [
    "Objective",
    "ObjectiveSettings",
    "build_objectives",
    "register",
    "registered",
    "validate_objectives",
]
