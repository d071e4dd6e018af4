"""Objectives are found by name; the recipe's `[objectives.NAME]` tables pick and weigh them.

A new loss is one module with an `Objective` subclass and its settings (an `ObjectiveSettings`
subclass whose `objective` names the class), made known by an entry point in the
`scl_cli.objectives` group that names the settings class (see `config.objectives`), or in-process
with `@register`. The trainer only sums what the enabled objectives return.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, ClassVar

import torch

from scl_cli.config.objectives import ObjectiveSettings, register_settings, registered_settings

if TYPE_CHECKING:
    from scl_cli.objectives.context import StepContext

LossOutput = dict[str, torch.Tensor]
"""What `Objective.loss` returns: `"loss"` (the unweighted loss, with gradient) and anything else
worth logging (detached 0-d tensors, logged as `NAME/KEY`)."""


class Objective:
    """One training loss.

    `encodings` says which unimodal passes it reads (so they run batched); `plan` runs first for
    every enabled objective and declares the fusion passes it needs (so the step can run all of
    them in as few batched calls as possible); `loss` then reads the shared passes from the context.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[ObjectiveSettings]] = ObjectiveSettings

    def __init__(self, settings: ObjectiveSettings) -> None:
        self.settings = settings

    def setup_model(self, model: torch.nn.Module) -> list[str]:
        """Add the task head this objective trains, if any, before weights are loaded; returns the
        prefixes of the parameters it created (a checkpoint may lack them)."""
        return []

    def init_new_heads(self, model: torch.nn.Module, missing: set[str]) -> None:
        """After loading: initialise heads the checkpoint did not hold (`missing` key names)."""

    def probe_fields(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Task fields this objective reads from a batch, shaped like `batch` (images [B, T, 3, H, W],
        text_ids [B, L]) on its device: lets a shape-only probe run the step (`training.freeze`)."""
        return {}

    def encodings(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The (text, image) variants of the unimodal passes this objective reads (see StepContext).
        The context encodes every declared variant of a modality in one batched call; a variant
        read without being declared is encoded on its own. Default: none declared."""
        return (), ()

    def plan(self, ctx: StepContext) -> None:
        """Declare fusion passes with `ctx.request_fusion(...)`; default: none."""

    def clip_logs(self) -> tuple[str, ...]:
        """Keys of the values `loss` reports on clip batches only (a time-order term, say). In a run
        that mixes images and clips they are logged as means over its clip batches."""
        return ()

    def loss(self, ctx: StepContext) -> LossOutput:
        """`{"loss": unweighted loss, **detached values to log}`."""
        raise NotImplementedError(f"objective {self.name!r} does not define loss()")


_CLASSES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an objective available to recipes in this process under `cls.name`."""
    settings = cls.Settings
    if settings is ObjectiveSettings:  # no settings of its own: give it a class to carry its name
        settings = cls.Settings = type(
            f"{cls.__name__}Settings", (ObjectiveSettings,), {"__module__": cls.__module__}
        )
    if "name" not in settings.__dict__:
        settings.name = cls.name
    if "objective" not in settings.__dict__:
        settings.objective = f"{cls.__module__}:{cls.__qualname__}"
    known = _CLASSES.get(cls.name)
    if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"objective {cls.name!r} is registered twice")
    register_settings(settings)
    _CLASSES[cls.name] = cls
    return cls


def objective_class(name: str) -> type[Objective]:
    """The `Objective` subclass of a registered name (imported on first use)."""
    if name not in _CLASSES:
        known = registered_settings()
        if name not in known:
            raise ValueError(f"unknown objective {name!r}; known: {', '.join(sorted(known))}")
        module, _, attr = known[name].objective.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise TypeError(f"{known[name].objective} (objective {name!r}) is not an Objective subclass")
        _CLASSES[name] = cls
    return _CLASSES[name]


def registered() -> dict[str, type[Objective]]:
    """Every known objective class by name (imports them all: for listings, not for validation)."""
    return {name: objective_class(name) for name in registered_settings()}


def build_objectives(settings: dict[str, ObjectiveSettings]) -> dict[str, Objective]:
    """Instantiate the enabled objectives (weight > 0), in the recipe's order."""
    return {name: objective_class(name)(s) for name, s in settings.items() if s.weight > 0}
