"""AdamW with per-part learning rates and the warm-up / linear-decay schedule (DESIGN §1.3).

Two ways to sort parameters into groups (`optim.param_groups`): scl's (`group_of`, the model's
`param_group`: encoders x1, fusion x lr_mult_fusion, heads x lr_mult_heads; matrices decay) and
the paper's (`released_group`: the released `set_schedule` applied to the published names).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from scl_cli.config.recipe import OptimConfig
from scl_cli.model.official import released_name

PARTS = ("encoder", "fusion", "head")

# IIGROUP/SCL scl/modules/scl_utils.py, set_schedule: substrings of the published parameter names.
RELEASED_NO_DECAY = (
    "bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight",
    "norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight",
)  # fmt: skip
RELEASED_HEADS = ("vqa_classifier", "nlvr2_classifier", "snli_classifier", "mlm_score", "itm_score")
RELEASED_CROSS_MODAL = ("cross_modal",)


def lr_multiplier(part: str, cfg: OptimConfig) -> float:
    """Learning-rate multiplier of a model part: encoders x1, fusion and heads as the recipe says."""
    if part == "encoder":
        return 1.0
    if part == "fusion":
        return cfg.lr_mult_fusion
    if part == "head":
        return cfg.lr_mult_heads
    raise ValueError(f"unknown parameter group {part!r}; expected one of {', '.join(PARTS)}")


def uses_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Matrices decay; biases, norm weights and scalars (class tokens, temperatures) do not."""
    return param.ndim >= 2 and not name.endswith(".bias")


def released_group(name: str) -> tuple[str, bool]:
    """(part, decay) that the released `set_schedule` gives our parameter `name`, judged on its
    published name: "head" (x lr_mult_head) for the ITM/MLM/VQA/NLVR2 heads, "fusion" (x
    lr_mult_cross_modal) for names containing "cross_modal", "encoder" (the base rate) for the rest
    (token types, ITC projections and temperature, the rank head included); weight decay unless the
    name contains one of its no-decay substrings."""
    theirs = released_name(name)
    head = any(h in theirs for h in RELEASED_HEADS)
    cross = any(c in theirs for c in RELEASED_CROSS_MODAL)
    if head and cross:  # in none of set_schedule's six groups: it would not be trained there at all
        raise ValueError(f"{name} ({theirs}) is both a head and cross-modal under the paper's rules")
    part = "head" if head else "fusion" if cross else "encoder"
    return part, not any(nd in theirs for nd in RELEASED_NO_DECAY)


def build_param_groups(model: nn.Module, cfg: OptimConfig, group_of: Callable[[str], str]) -> list[dict]:
    """Optimizer parameter groups, one per (part, decay) pair that has trainable parameters.

    `group_of(name)` maps a parameter name to "encoder", "fusion" or "head" (scl's grouping; with
    `cfg.param_groups = "paper"`, `released_group` decides part and decay instead). Each group
    carries `name` (e.g. "fusion" or "fusion_no_decay"), `lr_mult`, `lr` and `initial_lr` (= cfg.lr
    x lr_mult, what the scheduler scales) and `weight_decay`. Frozen parameters are left out; tied
    parameters appear once.
    """
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if cfg.param_groups == "paper":
            part, decay = released_group(name)
        else:
            part, decay = group_of(name), uses_weight_decay(name, param)
        lr_multiplier(part, cfg)  # validates the part name
        buckets.setdefault((part, decay), []).append(param)

    groups = []
    for part in PARTS:
        for decay in (True, False):
            params = buckets.get((part, decay))
            if not params:
                continue
            mult = lr_multiplier(part, cfg)
            groups.append(
                {
                    "params": params,
                    "name": part if decay else f"{part}_no_decay",
                    "lr_mult": mult,
                    "lr": cfg.lr * mult,
                    "initial_lr": cfg.lr * mult,
                    "weight_decay": cfg.weight_decay if decay else 0.0,
                }
            )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, group_of: Callable[[str], str], device_type: str
) -> torch.optim.AdamW:
    """AdamW over `build_param_groups`; the fused CUDA kernel when every parameter lives on CUDA."""
    groups = build_param_groups(model, cfg, group_of)
    params = [p for g in groups for p in g["params"]]
    fused = device_type == "cuda" and all(p.is_cuda and p.is_floating_point() for p in params)
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        # None lets torch pick foreach where it can.
        fused=True if fused else None,
    )


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Share of the peak learning rate at `step`: 0 -> 1 over the warm-up, then linear to min_lr_ratio."""
    if step < warmup_steps:
        return step / warmup_steps
    decay_steps = max(max_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    return 1.0 - (1.0 - min_lr_ratio) * progress


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over `cfg.warmup_steps()`, then linear decay to `cfg.min_lr_ratio` x peak.

    LambdaLR scales each group's `initial_lr`, so the part multipliers hold at every step. Call
    `scheduler.step()` after each optimizer step: optimizer step k (from 0) then uses factor k.
    """
    warmup, max_steps, min_ratio = cfg.warmup_steps(), cfg.max_steps, cfg.min_lr_ratio

    # A closure, not a callable object: LambdaLR's state_dict then stores no lambda state.
    def factor(step: int) -> float:
        return lr_factor(step, warmup, max_steps, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
