"""Training objectives, one module each, found by name through the `scl_cli.objectives` entry
points (`registry`), and the step context they share (`context`, `masking`)."""

from scl_cli.config.objectives import ObjectiveSettings, validate_objectives
from scl_cli.objectives.registry import (
    LossOutput,
    Objective,
    build_objectives,
    objective_class,
    register,
    registered,
)

__all__ = [
    "LossOutput",
    "Objective",
    "ObjectiveSettings",
    "build_objectives",
    "objective_class",
    "register",
    "registered",
    "validate_objectives",
]
