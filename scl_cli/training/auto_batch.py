"""`optim.micro_batch_size = "auto"`: the largest micro-batch that fits this device.

On a CUDA device the run probes before it starts: for a candidate micro-batch m (a divisor of the
per-device batch, so that gradient accumulation fills the global batch exactly) it runs two
accumulated forward/backward passes and an AdamW step (learning rate 0: the weights do not move;
masks and RNG are restored afterwards) on synthetic data, and m fits when nothing ran out of memory
and the allocator's peak stayed below `1 - MARGIN` of the device's memory. A binary search over the
candidates finds the largest that fits. The answer is cached in `OUTPUT/auto_micro_batch.json`,
keyed by what decides memory (model, masking, objectives, precision and speed options, per-device
batch, frames) and the device (name, memory, torch version), so a resumed run does not probe again.

On CPU "auto" keeps the recipe's default (the whole per-device batch). Tests inject `probe`, a
predicate `m -> fits`, to exercise the search and the cache anywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scl_cli.config import Recipe
from scl_cli.errors import UsageError
from scl_cli.io.atomic import atomic_write_json
from scl_cli.reporting import NullReporter, Reporter
from scl_cli.training.estimate import synthetic_batch
from scl_cli.training.optim import build_optimizer
from scl_cli.training.runtime import Runtime
from scl_cli.training.state import capture_rng_state, restore_rng_state

CACHE_FILE = "auto_micro_batch.json"
MARGIN = 0.10  # share of the device's memory kept free (allocator fragmentation, DDP buckets, data)


def candidates(per_device: int) -> list[int]:
    """Micro-batches that divide the per-device batch, smallest first."""
    return [m for m in range(1, per_device + 1) if per_device % m == 0]


def largest_fitting(options: list[int], fits: Callable[[int], bool]) -> int | None:
    """Binary search for the largest option that fits (fitting is monotone: smaller fits too)."""
    lo, hi, best = 0, len(options) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(options[mid]):
            best, lo = options[mid], mid + 1
        else:
            hi = mid - 1
    return best


def device_description(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"name": "cpu", "memory": 0, "torch": torch.__version__}
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "memory": int(props.total_memory), "torch": torch.__version__}


def cache_key(recipe: Recipe, device: dict[str, Any], frames: int = 1) -> str:
    """What decides the memory of a step, hashed."""
    topo = recipe.topology
    what = {
        "model": recipe.model.model_dump(mode="json"),
        "masking": recipe.masking.model_dump(mode="json"),
        "objectives": {k: v.model_dump(mode="json") for k, v in recipe.enabled_objectives().items()},
        "precision": topo.precision,
        "compile": topo.compile,
        "activation_checkpointing": topo.activation_checkpointing,
        "strategy": topo.strategy,
        "world": topo.world_size,
        "per_device": recipe.optim.batch_size // topo.world_size,
        "frames": frames,
        "device": device,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def read_cache(run_dir: Path, key: str) -> int | None:
    try:
        entries = json.loads((Path(run_dir) / CACHE_FILE).read_text(encoding="utf-8"))
        return int(entries[key]["micro_batch_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(run_dir: Path, key: str, entry: dict[str, Any]) -> None:
    path = Path(run_dir) / CACHE_FILE
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        entries = {}
    entries[key] = entry
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, entries, indent=2)


def cuda_probe(step_module: Any, model: torch.nn.Module, recipe: Recipe, runtime: Runtime, frames: int):
    """`m -> fits` on this CUDA device (see the module docstring). Distributed runs probe on every
    rank at once (the step's gathers are collectives) and agree on the smallest answer."""
    device = runtime.device
    capacity = torch.cuda.get_device_properties(device).total_memory

    def fits(m: int) -> bool:
        draws, rng = step_module.draws, capture_rng_state()
        optimizer = build_optimizer(model, recipe.optim, model.param_group, device.type)
        for group in optimizer.param_groups:
            group["lr"] = 0.0  # the probe must not move the weights
        ok = True
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            batch = synthetic_batch(recipe, m, model.vocab_size, device, frames)
            for _ in range(2):
                for _ in range(2):  # gradients of the first micro-batch alive in the second
                    with runtime.autocast():
                        total = step_module(batch)["total"]
                    total.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            ok = torch.cuda.max_memory_allocated(device) <= (1 - MARGIN) * capacity
        except torch.cuda.OutOfMemoryError:
            ok = False
        finally:
            model.zero_grad(set_to_none=True)
            del optimizer
            step_module.draws = draws
            restore_rng_state(rng)
            torch.cuda.empty_cache()
        if runtime.distributed:
            import torch.distributed as dist

            flag = torch.tensor([1 if ok else 0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            ok = bool(flag.item())
        return ok

    return fits


def resolve_micro_batch(
    recipe: Recipe,
    runtime: Runtime,
    run_dir: Path,
    probe: Callable[[int], bool] | None = None,
    frames: int = 1,
    reporter: Reporter | None = None,
    device: dict[str, Any] | None = None,
) -> int:
    """Set `recipe.optim.micro_batch_size` from "auto" to a number and return it (module docstring).
    `probe` is the fit predicate (default: none on CPU, which keeps the default)."""
    reporter = reporter or NullReporter()
    per_device = recipe.optim.batch_size // recipe.topology.world_size
    if probe is None:
        reporter.info(f"optim.micro_batch_size = 'auto' on {runtime.device.type}: {per_device} (no probing "
                      "off CUDA; the whole per-device batch)")  # fmt: skip
        recipe.optim.micro_batch_size = per_device
        return per_device
    device = device or device_description(runtime.device)
    key = cache_key(recipe, device, frames)
    found = read_cache(run_dir, key)
    if found is not None and per_device % found == 0:
        reporter.info(f"optim.micro_batch_size = 'auto': {found} (cached in {Path(run_dir) / CACHE_FILE})")
        recipe.optim.micro_batch_size = found
        return found
    options = candidates(per_device)
    reporter.info(f"optim.micro_batch_size = 'auto': probing {device['name']} (candidates {options})")
    best = largest_fitting(options, probe)
    if best is None:
        raise UsageError(
            f"optim.micro_batch_size = 'auto': not even a micro-batch of 1 fits on {device['name']} — set "
            "topology.activation_checkpointing = true, topology.strategy = 'fsdp', or a smaller model.vision.image_size"
        )
    accumulation = per_device // best
    reporter.info(f"optim.micro_batch_size = 'auto': {best} per device x {accumulation} accumulation step(s) "
                  f"(largest that fits with {MARGIN:.0%} of the memory kept free)")  # fmt: skip
    if runtime.is_main:
        _write_cache(run_dir, key, {"micro_batch_size": best, "accumulation": accumulation, "device": device,
                                    "per_device_batch": per_device, "margin": MARGIN})  # fmt: skip
    recipe.optim.micro_batch_size = best
    return best
