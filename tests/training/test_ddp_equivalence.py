"""Data parallelism is exact: one step on a global batch of 8 split over two gloo processes (DDP,
and FSDP2 for the full set) gives the losses and the parameter gradients of one process on the
same 8 samples, for every objective — the contrastive ones gather with gradient, masks and ITM
negatives are drawn for the global batch (`StepRandom`).

Dropout is off (eval mode): its draws are per process and cannot match a single process's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from scl_cli.config.recipe import (
    FusionConfig,
    MaskingConfig,
    ModelConfig,
    TextConfig,
    TopologyConfig,
    VisionConfig,
)
from scl_cli.data.collate import trim_padding
from scl_cli.model import SCLModel
from scl_cli.objectives import build_objectives, validate_objectives
from scl_cli.objectives.masking import TextSpec
from scl_cli.training.freeze import freeze_unreachable
from scl_cli.training.parallel import wrap_data_parallel
from scl_cli.training.runtime import Runtime
from scl_cli.training.step import TrainStep
from tests.conftest import spawn_gloo

WORLD, GLOBAL_BATCH, VOCAB, PAD, L, SEED = 2, 8, 60, 1, 10, 5
SPEC = TextSpec(VOCAB, PAD, 4, torch.arange(5), torch.ones(VOCAB, dtype=torch.bool))
EVERY = {"itc": {}, "itm": {"negatives": "random"}, "mlm": {}, "scl_global": {}, "scl_local": {}}
# Every objective's loss is compared on its own (the logs), the gradients through their weighted sum.
CASES: dict[str, tuple[dict, str]] = {
    "all, random ITM negatives": (EVERY, "ddp"),
    "all, hard ITM negatives": ({**EVERY, "itm": {"negatives": "hard"}}, "ddp"),
    "itc alone (fusion and heads frozen)": ({"itc": {}}, "ddp"),
    "all, FSDP2": ({**EVERY, "itm": {"negatives": "hard"}}, "fsdp"),
}

# Captions of 4-6 tokens on rank 0 and up to 10 on rank 1, each rank's batch cut to its longest.
RAGGED = [5, 6, 4, 6, 9, 8, 10, 9]
TRIMMED = "all, hard ITM negatives, each rank padded to its longest caption"


def tiny_model() -> SCLModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        init="random",
        vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2),
        text=TextConfig(width=32, layers=1, heads=2, max_len=L),
        fusion=FusionConfig(width=32, layers=1, heads=2, dropout=0.0),
        itc_dim=16,
    )
    return SCLModel(cfg, VOCAB, PAD).eval()  # eval: no dropout


def global_batch(lengths: list[int] | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (GLOBAL_BATCH, L), generator=g)
    drawn = torch.randint(4, L + 1, (GLOBAL_BATCH,), generator=g)
    lengths = drawn if lengths is None else torch.tensor(lengths)
    pos = torch.arange(L)[None]
    ids[:, 0] = 0
    ids = torch.where(pos == lengths[:, None] - 1, torch.full_like(ids, 2), ids)
    mask = (pos < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD))
    images = torch.randint(0, 256, (GLOBAL_BATCH, 1, 3, 32, 32), generator=g, dtype=torch.uint8)
    return {"images": images, "text_ids": ids, "text_mask": mask}


def run_step(objectives: dict, strategy: str, runtime: Runtime, batch: dict) -> tuple[dict, dict]:
    """One forward/backward as pretrain() sets it up; logs averaged over ranks (as the trainer
    logs them) and every trainable parameter's gradient (DDP-averaged / unsharded)."""
    model = tiny_model()
    step = TrainStep(model, build_objectives(validate_objectives(objectives)), MaskingConfig(), SPEC, SEED)
    freeze_unreachable(model, step.objectives, step.masking, SPEC)
    wrapped, _ = wrap_data_parallel(step, model, TopologyConfig(strategy=strategy), runtime)
    logs = wrapped(batch)
    logs["total"].backward()
    values = {k: v.detach().float() for k, v in logs.items()}
    if runtime.distributed:
        keys = sorted(values)
        stacked = torch.stack([values[k] for k in keys])
        dist.all_reduce(stacked)
        values = dict(zip(keys, (stacked / runtime.world_size).unbind(), strict=True))
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            grads[name] = grad.detach().clone()
    return values, grads


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        runtime = Runtime(torch.device("cpu"), "fp32", rank, WORLD, rank)
        rows = GLOBAL_BATCH // WORLD
        local = {k: v[rank * rows : (rank + 1) * rows] for k, v in global_batch().items()}
        results = {name: run_step(objs, strategy, runtime, local) for name, (objs, strategy) in CASES.items()}
        # `data.pad_to_multiple`: each rank's batch padded only to its own longest caption (6 and 10)
        ragged = {k: v[rank * rows : (rank + 1) * rows] for k, v in global_batch(RAGGED).items()}
        ids, mask = trim_padding(ragged["text_ids"], ragged["text_mask"], 1)
        assert ids.shape[1] == (6, 10)[rank]
        results[TRIMMED] = run_step(
            *CASES["all, hard ITM negatives"], runtime, {**ragged, "text_ids": ids, "text_mask": mask}
        )
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux" or not dist.is_available(), reason="gloo test runs on Linux")
def test_two_processes_match_one_process_for_every_objective(tmp_path: Path) -> None:
    spawn_gloo(_worker, (str(tmp_path),), WORLD, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = Runtime(torch.device("cpu"), "fp32")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: same reduction order, whatever the machine's load
    try:
        wanted = {
            name: run_step(objectives, strategy, single, global_batch())
            for name, (objectives, strategy) in CASES.items()
        }
        wanted[TRIMMED] = run_step(*CASES["all, hard ITM negatives"], single, global_batch(RAGGED))
    finally:
        torch.set_num_threads(threads)
    for name in wanted:
        want_logs, want_grads = wanted[name]
        for rank, results in enumerate(ranks):
            logs, grads = results[name]
            assert logs.keys() == want_logs.keys(), name
            for key, value in want_logs.items():
                torch.testing.assert_close(
                    logs[key], value, atol=1e-5, rtol=1e-5, msg=f"{name}/{key} rank {rank}"
                )
            assert grads.keys() == want_grads.keys(), name
            for key, value in want_grads.items():
                torch.testing.assert_close(
                    grads[key],
                    value,
                    atol=1e-5,
                    rtol=1e-4,
                    msg=lambda m, n=name, k=key: f"{n}: grad of {k}: {m}",
                )
