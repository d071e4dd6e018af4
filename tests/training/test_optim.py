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


# ----------------------------------------------------------------------------- the paper's groups
def released_set_schedule_groups(named: list[tuple[str, nn.Parameter]], lr: float, wd: float,
                                 lr_mult_head: float, lr_mult_cross_modal: float) -> list[dict]:  # fmt: skip
    """IIGROUP/SCL scl/modules/scl_utils.py:314-406 (set_schedule), the six groups as written there,
    over (published name, parameter) pairs."""
    no_decay = [
        "bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight",
        "norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight",
    ]  # fmt: skip
    head_names = ["vqa_classifier", "nlvr2_classifier", "snli_classifier", "mlm_score", "itm_score"]
    cross_modal_names = ["cross_modal"]
    return [
        {
            "params": [
                p
                for n, p in named
                if not any(nd in n for nd in no_decay)
                and not any(bb in n for bb in head_names)
                and not any(ht in n for ht in cross_modal_names)
            ],
            "weight_decay": wd,
            "lr": lr,
        },
        {
            "params": [
                p
                for n, p in named
                if any(nd in n for nd in no_decay)
                and not any(bb in n for bb in head_names)
                and not any(ht in n for ht in cross_modal_names)
            ],
            "weight_decay": 0.0,
            "lr": lr,
        },
        {
            "params": [
                p
                for n, p in named
                if not any(nd in n for nd in no_decay)
                and any(bb in n for bb in head_names)
                and not any(ht in n for ht in cross_modal_names)
            ],
            "weight_decay": wd,
            "lr": lr * lr_mult_head,
        },
        {
            "params": [
                p
                for n, p in named
                if any(nd in n for nd in no_decay)
                and any(bb in n for bb in head_names)
                and not any(ht in n for ht in cross_modal_names)
            ],
            "weight_decay": 0.0,
            "lr": lr * lr_mult_head,
        },
        {
            "params": [
                p
                for n, p in named
                if not any(nd in n for nd in no_decay)
                and not any(bb in n for bb in head_names)
                and any(ht in n for ht in cross_modal_names)
            ],
            "weight_decay": wd,
            "lr": lr * lr_mult_cross_modal,
        },
        {
            "params": [
                p
                for n, p in named
                if any(nd in n for nd in no_decay)
                and not any(bb in n for bb in head_names)
                and any(ht in n for ht in cross_modal_names)
            ],
            "weight_decay": 0.0,
            "lr": lr * lr_mult_cross_modal,
        },
    ]


def settings_by_param(groups: list[dict]) -> dict[int, tuple[float, float]]:
    out = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in out, "a parameter in two groups"
            out[id(p)] = (pytest.approx(g["lr"]), g["weight_decay"])
    return out


@pytest.fixture(scope="module")
def paper_model() -> nn.Module:
    from scl_cli.config.recipe import ModelConfig
    from scl_cli.model import SCLModel
    from scl_cli.model.task_heads import add_nlvr2_head, add_rank_head, add_vqa_head

    with torch.device("meta"):
        model = SCLModel(ModelConfig(), vocab_size=50265, pad_token_id=1)
        add_vqa_head(model, 3129)
        add_nlvr2_head(model)
        add_rank_head(model)
    return model


def test_paper_groups_are_the_released_set_schedule_by_name(paper_model) -> None:
    from scl_cli.model.official import released_name

    from ..model.test_official import KEYS_FILE, official_shapes

    cfg = OptimConfig(lr=2e-5, lr_mult_fusion=5, lr_mult_heads=5, weight_decay=0.01, param_groups="paper")
    named = list(paper_model.named_parameters())
    if KEYS_FILE is not None:  # every parameter has its published name (task heads: fine-tuned names)
        published = set(official_shapes())
        heads = ("vqa_classifier.", "nlvr2_classifier.", "rank_output.")
        missing = [
            n
            for n, _ in named
            if released_name(n) not in published and not released_name(n).startswith(heads)
        ]
        assert missing == ["vision.temporal_embedding"]
    ours = settings_by_param(build_param_groups(paper_model, cfg, paper_model.param_group))
    theirs = settings_by_param(
        released_set_schedule_groups([(released_name(n), p) for n, p in named], 2e-5, 0.01, 5, 5)
    )
    assert ours == theirs
    assert len(ours) == len(named)


@pytest.mark.parametrize(
    ("name", "paper", "scl"),
    [  # (lr multiplier, decays) under "paper" and under "scl"
        ("token_type_embeddings.weight", (1, True), (5, True)),
        ("itc_text_proj.0.weight", (1, True), (5, True)),
        ("itc_image_proj.1.weight", (1, True), (5, False)),  # the projection's LayerNorm: decays there
        ("itc_temperature", (1, True), (5, False)),
        ("text_transform.weight", (5, True), (5, True)),
        ("image_pooler.dense.bias", (5, False), (5, False)),
        ("fusion.text_layers.0.attention.output.LayerNorm.weight", (5, False), (5, False)),
        ("itm_head.fc.weight", (5, True), (5, True)),
        ("mlm_head.transform.LayerNorm.weight", (5, False), (5, False)),
        ("mlm_head.bias", (5, False), (5, False)),
        ("vqa_head.1.weight", (5, True), (5, False)),
        ("rank_head.weight", (1, True), (5, True)),  # rank_output is not among the released heads
        ("vision.blocks.0.ln_1.weight", (1, True), (1, False)),  # "ln_1.weight" is not "norm.weight"
        ("vision.class_embedding", (1, True), (1, False)),
        ("vision.mask_token", (1, True), (1, True)),
        ("vision.blocks.0.attn.in_proj_bias", (1, False), (1, False)),
        ("text.encoder.layer.0.output.LayerNorm.weight", (1, False), (1, False)),
        ("text.embeddings.word_embeddings.weight", (1, True), (1, True)),
    ],
)
def test_lr_multiplier_and_decay_by_name(paper_model, name, paper, scl) -> None:
    param = paper_model.get_parameter(name)
    for grouping, (mult, decays) in (("paper", paper), ("scl", scl)):
        cfg = OptimConfig(
            lr=2e-5, lr_mult_fusion=5, lr_mult_heads=5, weight_decay=0.01, param_groups=grouping
        )
        group = next(
            g for g in build_param_groups(paper_model, cfg, paper_model.param_group)
            if any(p is param for p in g["params"])
        )  # fmt: skip
        assert (group["lr_mult"], group["weight_decay"] > 0) == (mult, decays), (grouping, name)
