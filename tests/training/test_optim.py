"""Parameter groups (decay, multipliers) and the warm-up / linear-decay schedule."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from scl_cli.config.recipe import OptimConfig
from scl_cli.training.optim import build_optimizer, build_param_groups, build_scheduler, lr_factor


class Parts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vision = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.fusion = nn.Linear(4, 4)
        self.heads = nn.Linear(4, 2)
        self.temperature = nn.Parameter(torch.tensor(0.07))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def group_of(name: str) -> str:
    if name.startswith("fusion."):
        return "fusion"
    if name.startswith("heads.") or name == "temperature":
        return "head"
    return "encoder"


CFG = OptimConfig(
    lr=1e-3, lr_mult_fusion=5, lr_mult_heads=10, weight_decay=0.05, warmup=10, max_steps=110, min_lr_ratio=0.1
)


def names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_groups_split_by_part_and_decay() -> None:
    model = Parts()
    groups = {g["name"]: g for g in build_param_groups(model, CFG, group_of)}
    assert set(groups) == {
        "encoder",
        "encoder_no_decay",
        "fusion",
        "fusion_no_decay",
        "head",
        "head_no_decay",
    }
    assert names(model, groups["encoder"]) == {"vision.0.weight"}
    assert names(model, groups["encoder_no_decay"]) == {"vision.0.bias", "vision.1.weight", "vision.1.bias"}
    assert names(model, groups["head_no_decay"]) == {"heads.bias", "temperature"}
    for name, mult in (("encoder", 1.0), ("fusion", 5.0), ("head", 10.0)):
        for g in (groups[name], groups[f"{name}_no_decay"]):
            assert g["lr_mult"] == mult and g["lr"] == g["initial_lr"] == pytest.approx(1e-3 * mult)
        assert groups[name]["weight_decay"] == 0.05 and groups[f"{name}_no_decay"]["weight_decay"] == 0.0
    grouped = {n for g in groups.values() for n in names(model, g)}
    assert not any(n.startswith("frozen.") for n in grouped)
    assert len(grouped) == sum(p.requires_grad for p in model.parameters())


def test_unknown_group_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown parameter group 'decoder'"):
        build_param_groups(Parts(), CFG, lambda name: "decoder")


@pytest.mark.parametrize(
    ("step", "factor"), [(0, 0.0), (5, 0.5), (10, 1.0), (60, 0.55), (110, 0.1), (200, 0.1)]
)
def test_schedule_values(step: int, factor: float) -> None:
    optimizer = build_optimizer(Parts(), CFG, group_of, "cpu")
    scheduler = build_scheduler(optimizer, CFG)
    for _ in range(step):
        optimizer.step()
        scheduler.step()
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(1e-3 * group["lr_mult"] * factor)


def test_warmup_as_a_fraction_and_without_warmup() -> None:
    assert lr_factor(5, OptimConfig(warmup=0.1, max_steps=100).warmup_steps(), 100, 0.0) == 0.5
    assert lr_factor(0, 0, 100, 0.0) == 1.0 and lr_factor(50, 0, 100, 0.0) == 0.5


def test_optimizer_uses_recipe_betas_and_foreach_on_cpu() -> None:
    optimizer = build_optimizer(Parts(), CFG, group_of, "cpu")
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == CFG.betas and optimizer.defaults["eps"] == CFG.eps
    assert not optimizer.defaults["fused"]


def test_optimizer_and_scheduler_state_round_trip() -> None:
    torch.manual_seed(0)
    model = Parts()
    optimizer = build_optimizer(model, CFG, group_of, "cpu")
    scheduler = build_scheduler(optimizer, CFG)

    def train_step(m: nn.Module, opt: torch.optim.Optimizer, sched, x: torch.Tensor) -> None:
        (m.heads(m.fusion(m.vision(x))).square().mean() * m.temperature).backward()
        opt.step()
        sched.step()
        opt.zero_grad()

    inputs = torch.randn(5, 3, 4)
    for x in inputs[:3]:
        train_step(model, optimizer, scheduler, x)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": optimizer.state_dict(), "sched": scheduler.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    fresh = Parts()
    fresh.load_state_dict(saved["model"])
    fresh_opt = build_optimizer(fresh, CFG, group_of, "cpu")
    fresh_sched = build_scheduler(fresh_opt, CFG)
    fresh_opt.load_state_dict(saved["opt"])
    fresh_sched.load_state_dict(saved["sched"])
    for x in inputs[3:]:
        train_step(model, optimizer, scheduler, x)
        train_step(fresh, fresh_opt, fresh_sched, x)

    assert [g["lr"] for g in fresh_opt.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert [g["name"] for g in fresh_opt.param_groups] == [g["name"] for g in optimizer.param_groups]
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
