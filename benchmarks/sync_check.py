"""Does the pre-training step make the host wait for the GPU? Runs the paper-size step (every
objective, bf16, batch 8) under `torch.cuda.set_sync_debug_mode("error")`: any host-device sync
inside forward, backward or the fused AdamW step raises, and the JSON names where.

    .venv/bin/python benchmarks/sync_check.py [recipe] [--set a.b=v ...]

On a CPU (`--set topology.device=cpu`, the rehearsal in `gpu_check.sh --rehearse`) the same step runs
twice and the report says that syncs were not checked.
"""

from __future__ import annotations

import json
import sys
import traceback

import torch

from scl_cli.config import load_recipe
from scl_cli.engines.bench_pretrain import _vocab_and_spec, synthetic_batch
from scl_cli.model import SCLModel
from scl_cli.training.optim import build_optimizer
from scl_cli.training.runtime import setup_runtime
from scl_cli.training.step import build_train_step


def main() -> None:
    args = sys.argv[1:] or ["recipes/base.toml"]
    sets = [a.split("=", 1)[1] if a.startswith("--set=") else a for a in args[1:] if a != "--set"]
    base = [
        "model.init=random",
        "topology.devices_per_node=1",
        "topology.device=cuda",
        "topology.precision=bf16",
    ]
    recipe = load_recipe(args[0], base + sets)  # later --set values win (a CPU rehearsal sets device=cpu)
    runtime = setup_runtime(recipe.topology)
    vocab, spec, pad, _ = _vocab_and_spec(recipe)
    model = SCLModel(recipe.model, vocab, pad)
    step = build_train_step(recipe, model, spec, runtime)
    optimizer = build_optimizer(model, recipe.optim, model.param_group, runtime.device.type)
    batch = synthetic_batch(recipe, 8, vocab, runtime.device)

    def one_step() -> None:
        with runtime.autocast():
            total = step(batch)["total"]
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step()
    report = {"fused_adamw": bool(optimizer.defaults.get("fused")), "syncs": "none"}
    if runtime.device.type != "cuda":  # a rehearsal: the same step runs, but only CUDA can detect syncs
        one_step()
        report["syncs"] = f"not checked on {runtime.device.type}"
        print(json.dumps(report, indent=2))
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        one_step()
    except RuntimeError as err:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if "scl_cli" in f.filename]
        report["syncs"] = str(err).splitlines()[0]
        report["where"] = [f"{f.filename.split('scl_cli/')[-1]}:{f.lineno} {f.line}" for f in frames[-3:]]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
