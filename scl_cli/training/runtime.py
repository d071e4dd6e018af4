"""Where and how a run computes: device, mixed precision, process group, seeding."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import signal
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from scl_cli.config.recipe import TopologyConfig
from scl_cli.errors import UsageError


@dataclass
class Runtime:
    device: torch.device
    precision: str  # "bf16" | "fp16" | "fp32"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_process_group: bool = False  # setup_runtime started it: `teardown` ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16/fp16 autocast where the recipe asks for it; a no-op in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def teardown(self) -> None:
        """Leave the process group this runtime started (after every rank got here)."""
        if self.owns_process_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            self.owns_process_group = False

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling (on CPU too: torch's GradScaler("cpu")); bf16 and fp32 do not."""
        if self.precision == "fp16":
            return torch.amp.GradScaler(self.device.type)
        return None


def resolve_device(topology: TopologyConfig, local_rank: int = 0) -> torch.device:
    if topology.device == "cuda" or (topology.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError(
                "topology.device = 'cuda' but no CUDA device is visible; use --set topology.device=cpu"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_precision(topology: TopologyConfig, device: torch.device) -> str:
    """The recipe's precision, or for "auto": bf16 on GPUs that have it, fp16 on older GPUs, fp32 on
    CPU. bf16 and fp16 are accepted on CPU too (torch autocasts both there, and fp16 is loss-scaled by
    GradScaler("cpu")): slower than fp32 on most CPUs, but they rehearse a GPU run's precision path."""
    if topology.precision != "auto":
        return topology.precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def setup_runtime(topology: TopologyConfig) -> Runtime:
    """Join the process group when started by torchrun; otherwise one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(topology, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        die_with_parent()
        # A collective waits this long for a lost process before it raises (training.run reports it).
        timeout = datetime.timedelta(seconds=topology.collective_timeout)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        owns = True
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device, resolve_precision(topology, device), rank, world, local_rank, owns)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def die_with_parent() -> None:
    """Linux: make this process exit when torchrun's agent dies, even by SIGKILL (its workers live
    in sessions of their own, so a killed process group would otherwise leave them running)."""
    if sys.platform != "linux" or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
