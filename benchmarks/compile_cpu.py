"""`topology.compile = true` on CPU: compile time, steady-state step time against eager, and the
graph breaks of every compiled region, before a GPU window is spent on them.

    nice -n 5 .venv/bin/python benchmarks/compile_cpu.py [--steps 8] [--batch 32]
        [--backend inductor] [--precision fp32] [--json OUT]

Runs `recipes/tiny.toml` (every objective, a synthetic batch) eager and with each transformer layer
compiled (`training.step.build_train_step`: one `torch.compile` per ViT block, RoBERTa layer and
fusion layer), timing every step: the first of each, then `--steps` more alternating eager and
compiled, so that both meet the same load on a shared machine (medians reported). Then
`torch._dynamo.explain` runs on one layer of each kind with the inputs the step gave it, and on
the whole step module (which scl does not compile: its breaks say what stands between the step and
one captured graph). Prints a table and one JSON object (also written to --json).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scl_cli.config import load_recipe  # noqa: E402
from scl_cli.engines.bench_pretrain import _vocab_and_spec, synthetic_batch  # noqa: E402
from scl_cli.io.atomic import atomic_write_json  # noqa: E402
from scl_cli.model import SCLModel  # noqa: E402
from scl_cli.training.optim import build_optimizer  # noqa: E402
from scl_cli.training.runtime import Runtime, seed_everything  # noqa: E402
from scl_cli.training.step import build_train_step  # noqa: E402


def tiny_recipe(compile_: bool, backend: str, precision: str):
    return load_recipe(
        ROOT / "recipes" / "tiny.toml",
        [
            "model.text.vocab_size=1000",  # no tokenizer needed: synthetic captions
            "topology.device=cpu",
            f"topology.precision={precision}",
            f"topology.compile={'true' if compile_ else 'false'}",
            f"topology.compile_backend={backend}",
        ],
    )


def build(recipe, batch: int):
    runtime = Runtime(torch.device("cpu"), recipe.topology.precision)
    seed_everything(recipe.optim.seed)
    vocab, spec, pad, _ = _vocab_and_spec(recipe)
    model = SCLModel(recipe.model, vocab, pad)
    step_module = build_train_step(recipe, model, spec, runtime)
    optimizer = build_optimizer(model, recipe.optim, model.param_group, "cpu")
    data = synthetic_batch(recipe, batch, vocab, runtime.device)
    return runtime, model, step_module, optimizer, data


class Runner:
    """One model and optimizer; `step()` runs one optimizer step and returns (seconds, total loss)."""

    def __init__(self, recipe, batch: int) -> None:
        self.runtime, self.model, self.step_module, self.optimizer, self.data = build(recipe, batch)

    def step(self) -> tuple[float, float]:
        start = time.perf_counter()
        with self.runtime.autocast():
            total = self.step_module(self.data)["total"]
        total.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start, float(total.detach())


def timed_steps(eager: Runner, compiled: Runner, steps: int) -> dict[str, list[float]]:
    """Step 1 of each (the compiled one compiles every layer kind for both sequence lengths the
    step gives it), then `steps` steps alternating eager and compiled, so that both meet the same
    load on a shared machine."""
    out: dict[str, list[float]] = {"eager_s": [], "compiled_s": [], "eager_loss": [], "compiled_loss": []}
    for i in range(steps + 1):
        for name, runner in (("eager", eager), ("compiled", compiled)):
            if i == 0:
                torch.manual_seed(0)  # the same dropout draws: step 1 losses comparable
            seconds, loss = runner.step()
            out[f"{name}_s"].append(seconds)
            out[f"{name}_loss"].append(loss)
    return out


def layer_inputs(recipe, batch: int) -> dict[str, tuple[torch.nn.Module, tuple, dict]]:
    """The first ViT block, RoBERTa layer and fusion layer with the inputs one eager step gives them."""
    runtime, model, step_module, _, data = build(recipe, batch)
    regions = {
        "vit_block": model.vision.blocks[0],
        "roberta_layer": model.text.encoder.layer[0],
        "fusion_layer": model.fusion.text_layers[0],
    }
    seen: dict[str, tuple[torch.nn.Module, tuple, dict]] = {}
    hooks = []
    for name, layer in regions.items():

        def grab(module, args, kwargs, _name=name):
            seen.setdefault(
                _name, (module, tuple(a.detach() if torch.is_tensor(a) else a for a in args), dict(kwargs))
            )

        hooks.append(layer.register_forward_pre_hook(grab, with_kwargs=True))
    with torch.no_grad(), runtime.autocast():
        step_module(data)
    for hook in hooks:
        hook.remove()
    return seen


class BreakSites(logging.Handler):
    """Counts graph breaks by `file:line: reason` from dynamo's graph_breaks log (explain's own
    list keeps only the first break of each frame)."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        where = re.search(r"in user code at (\S+):(\d+)", msg)
        lines = [line.strip() for line in msg.split("Graph Break Reason:")[-1].splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 else (lines[0] if lines else "?")
        if where:
            self.sites[f"{Path(where.group(1)).name}:{where.group(2)}: {reason[:120]}"] += 1


def explain(fn, *args, **kwargs) -> dict:
    torch._dynamo.reset()
    torch._logging.set_logs(graph_breaks=True)
    handler = BreakSites()
    loggers = [
        logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.endswith("__graph_breaks")
    ]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        out = torch._dynamo.explain(fn)(*args, **kwargs)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
            logger.propagate = True
        torch._logging.set_logs()
    return {
        "graphs": out.graph_count,
        "graph_breaks": out.graph_break_count,
        "ops": out.op_count,
        "break_sites": dict(handler.sites.most_common()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--backend", choices=("inductor", "aot_eager", "eager"), default="inductor")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads (default 1: on a shared machine more threads make the timings noise)")  # fmt: skip
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    eager = Runner(tiny_recipe(False, args.backend, args.precision), args.batch)
    compiled = Runner(tiny_recipe(True, args.backend, args.precision), args.batch)
    timed = timed_steps(eager, compiled, args.steps)
    eager_s, compiled_s = timed["eager_s"], timed["compiled_s"]
    eager_loss, compiled_loss = timed["eager_loss"], timed["compiled_loss"]
    stats = dict(counters["stats"])
    breaks = {str(k).splitlines()[0][:200]: v for k, v in counters["graph_break"].items()}

    eager_steady = statistics.median(eager_s[1:])
    compiled_steady = statistics.median(compiled_s[1:])
    # The first compiled step compiles (every shape the step has appears in it); its excess over
    # the first eager step is the compile time.
    compile_s = compiled_s[0] - eager_s[0]

    recipe = tiny_recipe(False, args.backend, args.precision)
    regions = {
        name: explain(module, *a, **kw) for name, (module, a, kw) in layer_inputs(recipe, args.batch).items()
    }
    _, _, step_module, _, data = build(recipe, args.batch)
    whole = explain(step_module, data)
    torch._dynamo.reset()

    result = {
        "recipe": "recipes/tiny.toml (every objective), synthetic batch",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "backend": args.backend,
        "precision": args.precision,
        "batch": args.batch,
        "steps": args.steps,  # after the first step of each
        "eager_step_s": [round(t, 4) for t in eager_s],
        "compiled_step_s": [round(t, 4) for t in compiled_s],
        "eager_steady_s": round(eager_steady, 4),
        "compiled_steady_s": round(compiled_steady, 4),
        "compiled_speedup": round(eager_steady / compiled_steady, 3),
        "compile_time_s": round(compile_s, 2),
        # Step 1 is before any update: the same numbers up to kernel rounding. Later steps drift
        # apart as AdamW amplifies the rounding (every parameter moves by ~lr per step).
        "loss_step1_rel_diff": abs(compiled_loss[0] / eager_loss[0] - 1),
        "loss_eager": [round(x, 5) for x in eager_loss],
        "loss_compiled": [round(x, 5) for x in compiled_loss],
        "dynamo_stats": stats,
        "graph_breaks_during_training": breaks,
        "explain": {**regions, "whole_step (not compiled by scl)": whole},
    }
    print(f"{'':28} {'eager':>10} {'compiled':>10}")
    print(f"{'steady step (median)':28} {1000 * eager_steady:9.1f}ms {1000 * compiled_steady:9.1f}ms")
    print(f"{'first step':28} {1000 * eager_s[0]:9.1f}ms {1000 * compiled_s[0]:9.1f}ms")
    print(f"compile time ~{compile_s:.1f} s; speed-up {eager_steady / compiled_steady:.2f}x; dynamo {stats}")
    print(f"step-1 loss: eager {eager_loss[0]:.6f}, compiled {compiled_loss[0]:.6f}")
    for name, info in result["explain"].items():
        print(f"{name}: {info['graphs']} graph(s), {info['graph_breaks']} break(s)")
        for site, count in info["break_sites"].items():
            print(f"    {count:3d} x {site}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
