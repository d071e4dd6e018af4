"""`gather = "paper"`: data parallelism as the released code trains it, on two gloo processes.

The released code (IIGROUP/SCL at cd0d819) all-gathers with `AllGather_multi`
(scl/modules/dist_utils.py:144-161), whose backward returns only this rank's slice of the incoming
gradient, and computes every gathered loss in full on every rank. After DDP's average a gathered term
then trains at 1/world of its weight; what it never gathers (the global SCL text term, the local
SCL image term on image batches, MLM's mean) sees the local batch only. Each test below compares
scl's objectives, DDP-wrapped as a run wraps them, with a plain re-statement of the released loss
code on the same passes and masks (`released_losses`), and ITC's 1/world with scl's "global" ITC.
The default, "global", stays the one-process gradient: that is checked here for the masks
recipes/base.toml draws (test_ddp_equivalence.py covers the rest).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from scl_cli.config.recipe import MaskingConfig, TopologyConfig
from scl_cli.distributed import gather_local_grad
from scl_cli.objectives import build_objectives, validate_objectives
from scl_cli.objectives.context import StepContext
from scl_cli.objectives.masking import StepRandom
from scl_cli.training.freeze import freeze_unreachable
from scl_cli.training.parallel import wrap_data_parallel
from scl_cli.training.runtime import Runtime
from scl_cli.training.step import TrainStep
from tests.conftest import spawn_gloo

from .test_ddp_equivalence import GLOBAL_BATCH, SEED, SPEC, WORLD, global_batch, tiny_model

PAPER_MASKS = MaskingConfig(
    mlm_selection="wwm_collator", scl_text_sampling="with_replacement", patch_count="floor"
)
PAPER = {"gather": "paper"}
# (objectives, masking): each is run by scl on two processes.
CASES: dict[str, tuple[dict, MaskingConfig]] = {
    "itc, global": ({"itc": {"weight": 0.5}}, MaskingConfig()),
    "itc, paper": ({"itc": {"weight": 0.5, **PAPER}}, MaskingConfig()),
    "mlm, paper": ({"mlm": PAPER}, PAPER_MASKS),
    "scl, paper": ({"scl_global": PAPER, "scl_local": {"weight": 0.2, **PAPER}}, PAPER_MASKS),
    "all, global, the paper's masks": (
        {"itc": {"weight": 0.5}, "itm": {}, "mlm": {}, "scl_global": {}, "scl_local": {"weight": 0.2}},
        PAPER_MASKS,
    ),
}


# ----------------------------------------------------------------------------- the released code
class AllGather_multi(torch.autograd.Function):  # noqa: N801 - the released name
    """scl/modules/dist_utils.py:144-161, as released."""

    @staticmethod
    def forward(ctx, tensor):
        world_size = dist.get_world_size()
        output = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(output, tensor)
        ctx.rank = dist.get_rank()
        ctx.batch_size = tensor.shape[0]
        return torch.cat(output, 0)

    @staticmethod
    def backward(ctx, grad_output):
        return (grad_output[ctx.batch_size * ctx.rank : ctx.batch_size * (ctx.rank + 1)], None, None)


class NormSoftmaxLoss(torch.nn.Module):
    """scl/modules/objectives.py:377-400, as released."""

    def __init__(self, temperature=0.05):
        super().__init__()
        self.temperature = temperature

    def forward(self, x):
        i_sim = x / self.temperature
        i_sim = i_sim - i_sim.max(dim=1, keepdim=True)[0]
        i_logsm = F.log_softmax(i_sim, dim=1)
        j_sim = x.t() / self.temperature
        j_sim = j_sim - j_sim.max(dim=1, keepdim=True)[0]
        j_logsm = F.log_softmax(j_sim, dim=1)
        idiag = torch.diag(i_logsm)
        loss_i = idiag.sum() / len(idiag)
        jdiag = torch.diag(j_logsm)
        loss_j = jdiag.sum() / len(jdiag)
        return -loss_i - loss_j


def unit(x: torch.Tensor) -> torch.Tensor:
    """The released normalisation: x / max(|x|, 1e-8)."""
    n = x.norm(dim=-1).unsqueeze(-1)
    return x / torch.max(n, 1e-8 * torch.ones_like(n))


def released_losses(ctx: StepContext, names: set[str]) -> torch.Tensor:
    """The weighted sum the released code's training_step returns for these objectives: compute_con
    (objectives.py:402-418, con_weight 0.5), compute_mlm (118-128), compute_scl(token_recover=True)
    (194-290), on scl's shared passes and masks."""
    model, allgather, total = ctx.model, AllGather_multi.apply, torch.zeros(())
    if "itc" in names:
        text, image = ctx.itc()
        sim = unit(allgather(text)) @ unit(allgather(image)).t()
        total = total + 0.5 * NormSoftmaxLoss(model.itc_temperature)(sim)
    if "mlm" in names:
        logits = model.mlm_logits(ctx.fused("mlm").text)
        labels = torch.where(ctx.mlm_mask.picked, ctx.text_ids, torch.full_like(ctx.text_ids, -100))
        total = total + F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)
    if "scl" in names:
        a, b, c = ctx.fused("scl_masked_image"), ctx.fused("scl_masked_text"), ctx.fused("scl_masktok_image")
        text_feats, mask_text_feats = unit(a.text.detach()), unit(b.text)
        text_feat_cls, mask_text_feat_cls = text_feats[:, 0], mask_text_feats[:, 0]  # before the gather
        text_feats, mask_text_feats = allgather(text_feats), allgather(mask_text_feats)
        text_ids_mask = allgather(ctx.scl_text_mask.picked.float()).bool()
        image_feat_cls = allgather(unit(b.image[:, 0].detach()))
        mask_image_feat_cls = allgather(unit(a.image[:, 0]))
        loss = NormSoftmaxLoss(0.03)
        msm = loss(mask_image_feat_cls @ image_feat_cls.t()) + loss(mask_text_feat_cls @ text_feat_cls.t())
        sim_token_txt = mask_text_feats[text_ids_mask] @ text_feats[text_ids_mask].t()
        image_ids_mask = ctx.patch_mask.mask
        mask_image_tokens = F.normalize(c.image[:, 1:][image_ids_mask], dim=-1)
        image_tokens_gt = F.normalize(b.image[:, 1:][image_ids_mask].detach(), dim=-1)
        msm = msm + 0.2 * loss(mask_image_tokens @ image_tokens_gt.t()) + 0.2 * loss(sim_token_txt)
        total = total + msm
    return total


def released_step(masking: MaskingConfig, names: set[str], batch: dict, rank: int) -> dict[str, torch.Tensor]:
    """The re-statement on one rank: the same model, masks (StepRandom) and passes as scl's step;
    gradients all-reduced and divided by the world, as DDP does."""
    model = tiny_model()
    rows = batch["text_ids"].shape[0]
    ctx = StepContext(
        model, batch, masking, SPEC, StepRandom(SEED, 0, torch.device("cpu"), rows, rank, WORLD)
    )
    if "mlm" in names:
        ctx.request_fusion("mlm", text="mlm", image="full")
    if "scl" in names:
        ctx.request_fusion("scl_masked_image", text="full", image="drop")
        ctx.request_fusion("scl_masked_text", text="scl", image="full")
        ctx.request_fusion("scl_masktok_image", text="full", image="masktok")
    released_losses(ctx, names).backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            grads[name] = p.grad / WORLD
    return grads


def run_step(objectives: dict, masking: MaskingConfig, runtime: Runtime, batch: dict) -> tuple[dict, dict]:
    """scl's step as a run sets it up (freeze, DDP): logs averaged over ranks, gradients as DDP
    leaves them."""
    model = tiny_model()
    step = TrainStep(model, build_objectives(validate_objectives(objectives)), masking, SPEC, SEED)
    freeze_unreachable(model, step.objectives, step.masking, SPEC)
    wrapped, _ = wrap_data_parallel(step, model, TopologyConfig(), runtime)
    logs = wrapped(batch)
    logs["total"].backward()
    values = {k: v.detach().float() for k, v in logs.items()}
    if runtime.distributed:
        keys = sorted(values)
        stacked = torch.stack([values[k] for k in keys])
        dist.all_reduce(stacked)
        values = dict(zip(keys, (stacked / runtime.world_size).unbind(), strict=True))
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return values, grads


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        runtime = Runtime(torch.device("cpu"), "fp32", rank, WORLD, rank)
        rows = GLOBAL_BATCH // WORLD
        local = {k: v[rank * rows : (rank + 1) * rows] for k, v in global_batch().items()}
        results = {name: run_step(objs, masking, runtime, local) for name, (objs, masking) in CASES.items()}
        released = {
            "itc, paper": released_step(MaskingConfig(), {"itc"}, local, rank),
            "mlm, paper": released_step(PAPER_MASKS, {"mlm"}, local, rank),
            "scl, paper": released_step(PAPER_MASKS, {"scl"}, local, rank),
        }
        # The gather itself: forward all_gather, backward the local slice (AllGather_multi).
        x = torch.arange(6.0).view(3, 2).add(10 * rank).requires_grad_(True)
        y = torch.arange(6.0).view(3, 2).add(10 * rank).requires_grad_(True)
        weights = torch.arange(12.0).view(6, 2) * (rank + 1)
        (gather_local_grad(x) * weights).sum().backward()
        (AllGather_multi.apply(y) * weights).sum().backward()
        gathered = gather_local_grad(x.detach())
        torch.save(
            {"scl": results, "released": released, "gather": (gathered, x.grad, y.grad)},
            Path(out_dir) / f"rank{rank}.pt",
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def close(a: torch.Tensor, b: torch.Tensor, msg: str) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"{msg}: {m}")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    if sys.platform != "linux" or not dist.is_available():
        pytest.skip("gloo test runs on Linux")
    out = tmp_path_factory.mktemp("gather_paper")
    spawn_gloo(_worker, (str(out),), WORLD, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_gather_local_grad_is_the_released_all_gather(ranks) -> None:
    for rank, r in enumerate(ranks):
        gathered, grad, released_grad = r["gather"]
        assert torch.equal(gathered, torch.cat([torch.arange(6.0).view(3, 2) + 10 * k for k in range(WORLD)]))
        assert torch.equal(grad, released_grad)
        # only this rank's rows of the weights: the other rank's loss sends nothing back
        assert torch.equal(grad, (torch.arange(12.0).view(6, 2) * (rank + 1))[3 * rank : 3 * rank + 3])


@pytest.mark.parametrize("case", ["itc, paper", "mlm, paper", "scl, paper"])
def test_paper_gather_trains_what_the_released_code_trains(ranks, case) -> None:
    for rank, r in enumerate(ranks):
        _, grads = r["scl"][case]
        released = r["released"][case]
        assert grads.keys() == released.keys(), case
        for name, value in released.items():
            close(grads[name], value, f"{case}: grad of {name}, rank {rank}")


def test_paper_itc_trains_the_features_at_one_over_world_and_the_temperature_fully(ranks) -> None:
    # ITC alone: every parameter it reaches gets its gradient through the gathered features, except
    # the temperature, which each rank's full loss uses directly.
    _, global_grads = ranks[0]["scl"]["itc, global"]
    _, paper_grads = ranks[0]["scl"]["itc, paper"]
    assert global_grads.keys() == paper_grads.keys()
    for name, value in global_grads.items():
        want = value if name == "itc_temperature" else value / WORLD
        close(paper_grads[name], want, f"grad of {name}")
    logs = {r["scl"]["itc, paper"][0]["itc"].item() for r in ranks}
    assert len(logs) == 1  # every rank computes the whole loss
    close(ranks[0]["scl"]["itc, paper"][0]["itc"], ranks[0]["scl"]["itc, global"][0]["itc"], "the loss")


def test_global_gather_with_the_papers_masks_is_one_process_on_the_global_batch(ranks) -> None:
    objectives, masking = CASES["all, global, the paper's masks"]
    single = Runtime(torch.device("cpu"), "fp32")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want_logs, want_grads = run_step(objectives, masking, single, global_batch())
    finally:
        torch.set_num_threads(threads)
    for rank, r in enumerate(ranks):
        logs, grads = r["scl"]["all, global, the paper's masks"]
        for key, value in want_logs.items():
            close(logs[key], value, f"{key}, rank {rank}")
        for key, value in want_grads.items():
            close(grads[key], value, f"grad of {key}, rank {rank}")
