"""torch.distributed helpers: identities in one process, exact gradients across two gloo processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from scl_cli.distributed import (
    all_reduce_sum,
    barrier,
    dist_info,
    gather_with_grad,
    global_mean,
    is_dist,
    logged_mean,
)
from tests.conftest import spawn_gloo

WORLD = 2


def test_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = dist_info()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (0, 1, 0, True)
    assert not is_dist()
    barrier()


def test_env_variables_from_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist_info()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (3, 4, 1, False)


def test_single_process_identities() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    assert all_reduce_sum(x) is x
    total, count = torch.tensor(6.0, requires_grad=True), torch.tensor(4)
    assert global_mean(total, count).item() == 1.5
    assert logged_mean(total, count).item() == 1.5
    assert global_mean(torch.tensor(0.0), torch.tensor(0)).item() == 0.0


def full_loss_rows(local: torch.Tensor, everyone: torch.Tensor) -> torch.Tensor:
    """A contrastive-style loss: each local row against every gathered row, summed."""
    return torch.logsumexp(local @ everyone.T, dim=1).sum()


def _worker(rank: int, port: int, data: torch.Tensor, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        rows = data.shape[0] // WORLD
        local = data[rank * rows : (rank + 1) * rows].clone().requires_grad_(True)
        gathered = gather_with_grad(local)
        loss = full_loss_rows(local, gathered)
        mean = global_mean(loss, torch.tensor(rows))
        mean.backward()
        result = {
            "info": tuple(vars(dist_info()).values()),
            "gathered": gathered.detach(),
            "grad": local.grad,
            "logged": logged_mean(loss, torch.tensor(rows)),
            "sum": all_reduce_sum(torch.tensor([rank + 1.0])),
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # both ranks done with every collective before either tears gloo down
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux" or not dist.is_available(), reason="gloo test runs on Linux")
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = torch.randn(6, 3)
    spawn_gloo(_worker, (data, str(tmp_path)), WORLD, tmp_path)
    results = {r: torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)}

    reference = data.clone().requires_grad_(True)
    loss = full_loss_rows(reference, reference) / data.shape[0]
    loss.backward()

    for rank in range(WORLD):
        out = results[rank]
        assert out["info"] == (rank, WORLD, rank)
        assert torch.equal(out["gathered"], data)
        assert torch.allclose(out["logged"], loss.detach())
        assert out["sum"].item() == 3.0
    # DDP averages parameter gradients over ranks; the local slices' gradients, so averaged,
    # are the one-process gradient of the mean loss.
    combined = torch.cat([results[r]["grad"] for r in range(WORLD)]) / WORLD
    assert torch.allclose(combined, reference.grad, atol=1e-6)
