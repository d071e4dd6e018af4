"""Objectives are registered by name; the recipe's `[objectives.NAME]` tables pick and weigh them.

A new loss is one module that subclasses `Objective` and decorates itself with `@register`;
packages outside scl can add theirs through the `scl_cli.objectives` entry-point group.
The trainer only sums what the enabled objectives return.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from scl_cli.training.step_context import StepContext


class ObjectiveSettings(BaseModel):
    """Settings every objective has; subclasses add their own fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    weight: float = Field(1.0, ge=0, description="Multiplier in the total loss; 0 turns the objective off.")


class Objective:
    """One pre-training loss.

    `plan` runs first for every enabled objective and declares the fusion passes the objective
    needs (so the step can run all of them in as few batched calls as possible); `loss` then
    reads the shared passes from the context and returns the unweighted loss.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[ObjectiveSettings]] = ObjectiveSettings
    default_weight: ClassVar[float] = 1.0
    # Part of the paper's pre-training set (what a recipe without [objectives] gets)?
    pretraining: ClassVar[bool] = True

    def __init__(self, settings: ObjectiveSettings) -> None:
        self.settings = settings

    def setup_model(self, model: torch.nn.Module) -> list[str]:
        """Add the task head this objective trains, if any, before weights are loaded; returns the
        prefixes of the parameters it created (a checkpoint may lack them)."""
        return []

    def init_new_heads(self, model: torch.nn.Module, missing: set[str]) -> None:
        """After loading: initialise heads the checkpoint did not hold (`missing` key names)."""

    def encodings(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The (text, image) variants of the unimodal passes this objective reads (see StepContext).
        The context encodes every declared variant of a modality in one batched call; a variant
        read without being declared is encoded on its own. Default: none declared."""
        return (), ()

    def plan(self, ctx: StepContext) -> None:
        """Declare fusion passes with `ctx.request_fusion(...)`; default: none."""

    def loss(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError  # abstract: every registered objective overrides it


_REGISTRY: dict[str, type[Objective]] = {}
_loaded = False


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an objective available to recipes under `cls.name`."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"objective {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_and_plugins() -> None:
    global _loaded
    if _loaded:
        return
    import scl_cli.objectives  # noqa: F401  (registers the built-in objectives)

    for ep in entry_points(group="scl_cli.objectives"):
        ep.load()
    _loaded = True


def registered() -> dict[str, type[Objective]]:
    _load_builtin_and_plugins()
    return dict(_REGISTRY)


def validate_objectives(raw: dict[str, Any]) -> dict[str, ObjectiveSettings]:
    """Turn the recipe's `[objectives]` tables into validated settings.

    A missing table means the paper's set with its weights; a present one enables exactly the
    objectives it names. Raises ValueError naming the objective and field.
    """
    known = registered()
    if not raw:
        return {name: cls.Settings(weight=cls.default_weight) for name, cls in known.items() if cls.pretraining}
    out: dict[str, ObjectiveSettings] = {}
    for name, table in raw.items():
        if isinstance(table, ObjectiveSettings):
            out[name] = table
            continue
        if name not in known:
            raise ValueError(f"unknown objective {name!r}; known: {', '.join(sorted(known))}")
        if not isinstance(table, dict):
            raise ValueError(f"objectives.{name} must be a table, got {table!r}")
        try:
            out[name] = known[name].Settings(**table)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ValueError(
                f"objectives.{name}.{loc}: {first['msg']} (got {first.get('input')!r})"
            ) from None
    return out


def build_objectives(settings: dict[str, ObjectiveSettings]) -> dict[str, Objective]:
    """Instantiate the enabled objectives (weight > 0), in the recipe's order."""
    known = registered()
    return {name: known[name](s) for name, s in settings.items() if s.weight > 0}
