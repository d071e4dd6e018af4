"""What a run trains: every parameter its objectives can reach, and nothing else.

Instead of DDP's `find_unused_parameters=True` (a graph traversal after every forward, and silently
wrong gradients if a parameter is used on some steps only) or hand-kept lists of prefixes, the
parameters that the recipe's step can never reach are found by running that step once on the meta
device (shapes only, no memory, no data) and frozen: `vision.temporal_embedding` for still images,
the fusion and heads when only ITC is on, the mask token without local SCL, other tasks' heads when
fine-tuning ... They keep their values, stay in checkpoints, and take no optimizer state.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from scl_cli.config.recipe import MaskingConfig
from scl_cli.objectives.masking import TextSpec
from scl_cli.objectives.registry import Objective
from scl_cli.training.step import TrainStep


def unreachable_parameters(
    model: nn.Module,
    objectives: dict[str, Objective],
    masking: MaskingConfig,
    spec: TextSpec,
    frames: int = 1,
) -> list[str]:
    """Names of `model`'s trainable parameters that the training step over these objectives gives
    no gradient, for clips of `frames` frames. Found by one forward and backward of a shape-only
    copy of the model (with the same heads) on the meta device."""
    meta = torch.device("meta")
    fresh = {name: type(obj)(obj.settings) for name, obj in objectives.items()}
    with meta:
        probe = type(model)(model.config, model.vocab_size, model.pad_token_id)
    for name, child in model.named_children():  # task heads (and resized tables) beyond its config
        if not hasattr(probe, name) or _shapes(getattr(probe, name)) != _shapes(child):
            probe.add_module(name, copy.deepcopy(child).to(meta))
    with meta:
        for obj in fresh.values():  # task heads that objectives add (fine-tuning)
            obj.setup_model(probe)
    probe.train()
    step = TrainStep(probe, fresh, masking, spec.to(meta))
    vision, text = model.config.vision, model.config.text
    rows = 2
    batch = {
        "images": torch.empty(rows, frames, 3, vision.image_size, vision.image_size, device=meta),
        "text_ids": torch.empty(rows, text.max_len, dtype=torch.long, device=meta),
        "text_mask": torch.empty(rows, text.max_len, dtype=torch.long, device=meta),
    }
    for obj in fresh.values():
        batch.update(obj.probe_fields(probe, batch))
    step(batch)["total"].backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return [name for name, p in probe.named_parameters() if p.grad is None and name in trainable]


def freeze_unreachable(
    model: nn.Module,
    objectives: dict[str, Objective],
    masking: MaskingConfig,
    spec: TextSpec,
    frames: int = 1,
) -> list[str]:
    """Freeze (`requires_grad = False`) what `unreachable_parameters` finds; returns the names."""
    names = unreachable_parameters(model, objectives, masking, spec, frames)
    for name in names:
        model.get_parameter(name).requires_grad_(False)
    return names


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in module.named_parameters()}
