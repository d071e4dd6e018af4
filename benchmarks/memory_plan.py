"""Memory plan of the pre-training step before a GPU run: parameters, gradients, AdamW state and
activations per layer kind, estimated on fake tensors (shapes only, no memory, no arithmetic).

    nice -n 5 .venv/bin/python benchmarks/memory_plan.py [--batch 32] [--json OUT]   # paper recipe
    nice -n 5 .venv/bin/python benchmarks/memory_plan.py --validate                  # + a real CPU run

How the estimate is made. The whole training step (forward, backward, AdamW, two steps so that the
optimizer state exists) runs under `FakeTensorMode`, and a dispatch mode plays allocator: every new
tensor storage adds its bytes, and its release (a weak reference on the storage) takes them away;
the peak of the second step is the estimate, and what is alive at the end of its forward is split
by the layer kind that allocated it (ViT block, RoBERTa layer, fusion layer, or the rest:
embeddings, projections, heads and losses), with bf16 copies of the weights (autocast) apart.

A GPU step cannot be run on fake CUDA tensors (the autograd engine wants a device), and CPU
autocast differs from CUDA autocast (CUDA runs LayerNorm, softmax and normalisation in fp32 and
casts their outputs again for every matmul). So the CUDA estimate is: what is alive at the end of
a fake-CUDA forward under CUDA autocast (with the attention kernels a GPU picks: flash attention
without a mask, memory-efficient attention with one; fake CUDA would otherwise fall back to the
math kernel and materialise every attention matrix) plus what the backward adds on top of the end
of the forward, taken from the fake-CPU step with the same attention kernels.

`--validate` checks the method where it can be measured: a shrunk paper recipe runs for real on
the CPU, in a child process whose glibc hands every block over 64 KB back to the system at once
(MALLOC_MMAP_THRESHOLD_), and its peak resident memory above the start is compared with the
fake-CPU estimate of the same configuration.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
import warnings
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scl_cli.config import load_recipe  # noqa: E402
from scl_cli.engines.bench_pretrain import synthetic_batch, synthetic_spec  # noqa: E402
from scl_cli.io.atomic import atomic_write_json  # noqa: E402
from scl_cli.model import SCLModel  # noqa: E402
from scl_cli.objectives import build_objectives  # noqa: E402
from scl_cli.training.optim import build_optimizer  # noqa: E402
from scl_cli.training.step import TrainStep  # noqa: E402

GB = 1e9
KINDS = ("vit_block", "roberta_layer", "fusion_layer")
# The measured H200 figures this plan is compared with (benchmarks/RESULTS.md, 2026-11-29).
H200 = {"eager_b32": 31.1, "compiled_b32": 28.2, "checkpointing_b64": 13.3}
# Shrunk paper recipe for --validate: the same passes, sequence lengths (288 px, 50 tokens) and
# vocabulary, fewer and narrower layers, so that a real CPU step takes seconds.
VALIDATION = [
    "model.vision.width=256", "model.vision.heads=4", "model.vision.layers=2",
    "model.text.width=256", "model.text.heads=4", "model.text.layers=2",
    "model.fusion.width=256", "model.fusion.heads=4", "model.fusion.layers=1", "model.itc_dim=128",
]  # fmt: skip


def paper_recipe(extra: list[str] = ()):
    return load_recipe(ROOT / "recipes" / "base.toml", ["model.init=random", *extra])


# ----------------------------------------------------------------------------- simulated allocator
class Allocator(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created while active, and for each live storage
    the layer kind that created it (`kind` is kept up to date by module hooks)."""

    def __init__(self, weights: set[int]) -> None:
        super().__init__()
        self.weights = weights  # storage keys of the parameters
        self.live = self.peak = 0
        self.kind = "other"
        self.owner: dict[int, tuple[str, int]] = {}  # storage key -> (kind, bytes)
        # aten ops that are not views, by name (~ kernel launches); "weight_cast": casts of parameters
        self.ops: collections.Counter[str] = collections.Counter()

    def _free(self, key: int) -> None:
        _, nbytes = self.owner.pop(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        copies_weight = func is torch.ops.aten._to_copy.default and _key(args[0]) in self.weights
        if func.namespace == "aten" and not func.is_view:
            self.ops["weight_cast" if copies_weight else func.overloadpacket.__name__] += 1
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self.owner or key in self.weights:
                continue
            nbytes = storage.nbytes()
            self.owner[key] = ("weight_copies" if copies_weight else self.kind, nbytes)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key)
        return out

    def by_kind(self) -> dict[str, float]:
        out: collections.Counter[str] = collections.Counter()
        for kind, nbytes in self.owner.values():
            out[kind] += nbytes
        return {k: v / GB for k, v in sorted(out.items())}


def _key(t) -> int | None:
    return t.untyped_storage()._cdata if isinstance(t, torch.Tensor) else None


def layer_kinds(model: SCLModel) -> dict[torch.nn.Module, str]:
    kinds = {block: "vit_block" for block in model.vision.blocks}
    kinds.update({layer: "roberta_layer" for layer in model.text.encoder.layer})
    kinds.update({layer: "fusion_layer" for layer in (*model.fusion.text_layers, *model.fusion.image_layers)})
    return kinds


@contextlib.contextmanager
def track_kinds(model: SCLModel, allocator: Allocator):
    handles = []
    for module, kind in layer_kinds(model).items():

        def enter(mod, args, _kind=kind):
            allocator.kind = _kind

        def leave(mod, args, out):
            allocator.kind = "other"

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------- GPU attention kernels
def gpu_like_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """What SDPA runs on a GPU, for fake tensors: flash attention without a mask, memory-efficient
    attention with one (both save the output and a logsumexp, never the attention matrix)."""
    dtype = torch.get_autocast_dtype(q.device.type) if torch.is_autocast_enabled(q.device.type) else q.dtype
    q, k, v = (t.to(dtype) for t in (q, k, v))
    if attn_mask is None and dtype in (torch.float16, torch.bfloat16):
        return torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, dropout_p, is_causal, False, scale=scale
        )[0]
    bias = attn_mask
    if bias is not None and bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=dtype, device=q.device).masked_fill(~bias, float("-inf"))
    if bias is not None:
        bias = bias.to(dtype).expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, bias, True, dropout_p, is_causal, scale=scale
    )[0]


@contextlib.contextmanager
def gpu_attention(on: bool):
    original = F.scaled_dot_product_attention
    if on:
        F.scaled_dot_product_attention = gpu_like_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype | None):
    """CUDA autocast without a GPU (torch.autocast("cuda") switches itself off when none is visible)."""
    if dtype is None:
        yield
        return
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", False)


@contextlib.contextmanager
def no_device_generators():
    """The step's noise from the default generator: a CUDA generator cannot exist without a GPU, and
    which numbers are drawn does not change what is allocated."""
    from scl_cli.objectives.masking import StepRandom

    original = StepRandom.generator
    StepRandom.generator = lambda self, stream: None
    try:
        yield
    finally:
        StepRandom.generator = original


def no_device_rng_checkpoint(model: SCLModel) -> None:
    """Activation checkpointing on fake CUDA tensors: do not save the device RNG state (which needs
    a GPU); what is kept alive for the recomputation is the same."""
    import torch.utils.checkpoint as ckpt

    ckpt.get_device_states = lambda *args: ([], [])


# ----------------------------------------------------------------------------- what if
class _QuickGELUSavingInput(torch.autograd.Function):
    """x * sigmoid(1.702 x) keeping only x for backward (sigmoid recomputed): what a fused kernel
    or torch.compile's recomputation gives."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(1.702 * x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(1.702 * x)
        return grad * (s + 1.702 * x * s * (1 - s))


def _cast_once_forward(self, x, context, mask=None):
    """QKVAttention.forward with one autocast cast per input tensor instead of one per Linear
    (CUDA autocast casts the fp32 LayerNorm output separately for query, key and value)."""
    from scl_cli.model.attention import merge_heads, split_heads

    device = x.device.type
    if torch.is_autocast_enabled(device):
        low = torch.get_autocast_dtype(device)
        same = context is x
        x = x.to(low)
        context = x if same else context.to(low)
    q = split_heads(self.query(x), self.heads)
    k = split_heads(self.key(context), self.heads)
    v = split_heads(self.value(context), self.heads)
    p = self.dropout if self.training else 0.0
    return merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p))


WHAT_IF = {
    "quickgelu_saves_input": "QuickGELU keeps only its input for backward (fused or compiled)",
    "fusion_casts_once": "fusion attention casts each input once, not once per query/key/value Linear",
    "vit_checkpointing": "activation checkpointing of the ViT blocks only",
}


@contextlib.contextmanager
def what_if(name: str | None):
    from scl_cli.model.attention import QKVAttention
    from scl_cli.model.vision import QuickGELU

    saved = (QuickGELU.forward, QKVAttention.forward)
    if name == "quickgelu_saves_input":
        QuickGELU.forward = lambda self, x: _QuickGELUSavingInput.apply(x)
    elif name == "fusion_casts_once":
        QKVAttention.forward = _cast_once_forward
    try:
        yield
    finally:
        QuickGELU.forward, QKVAttention.forward = saved


# ----------------------------------------------------------------------------- the estimate
def simulate(
    recipe,
    batch: int,
    device: str,
    precision: str,
    backward: bool,
    gpu_kernels: bool,
    variant: str | None = None,
) -> dict:
    """Run the recipe's training step on fake tensors of `device` ("cpu" or "cuda") and account
    its memory. With `backward`, two full steps (the second is measured); without, one forward."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    vocab = recipe.model.text.vocab_size
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    dev = torch.device(device)
    with fake:
        with dev:
            model = SCLModel(recipe.model, vocab, 1)
        model.train()
        if recipe.topology.activation_checkpointing or variant == "vit_checkpointing":
            if device == "cuda":
                no_device_rng_checkpoint(model)
            if variant == "vit_checkpointing":
                model.vision.gradient_checkpointing = True
            else:
                model.set_gradient_checkpointing(True)
        step = TrainStep(
            model, build_objectives(recipe.objectives), recipe.masking, synthetic_spec(vocab).to(dev)
        )
        optimizer = build_optimizer(model, recipe.optim, model.param_group, "cpu")  # foreach AdamW
        data = synthetic_batch(recipe, batch, vocab, dev)
    params = list(model.parameters())
    weights = {_key(p) for p in params}
    param_bytes = sum(p.untyped_storage().nbytes() for p in params)
    trainable = sum(p.numel() * 4 for p in params if p.requires_grad)
    alloc = Allocator(weights)

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return cuda_autocast(dtype) if device == "cuda" else torch.autocast("cpu", dtype=dtype)

    result = {"device": device, "precision": precision, "batch": batch, "gpu_attention_kernels": gpu_kernels,
              "variant": variant}  # fmt: skip
    with (
        warnings.catch_warnings(),
        no_device_generators(),
        what_if(variant),
        fake,
        gpu_attention(gpu_kernels),
        alloc,
        track_kinds(model, alloc),
    ):
        warnings.simplefilter("ignore")
        for i in range(2 if backward else 1):
            if i == 1:
                alloc.peak = alloc.live  # the second step: optimizer state in place, as after a warm-up
                state = alloc.live
            ops_before = sum(alloc.ops.values())
            with autocast():
                total = step(dict(data))["total"]
            kinds = alloc.by_kind()
            forward_ops = sum(alloc.ops.values()) - ops_before
            forward_casts = {"weights": alloc.ops["weight_cast"], "activations": alloc.ops["_to_copy"]}
            if not backward:
                break
            total.backward()
            del total
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    pre = state if backward else 2 * trainable  # optimizer state: measured (step 1) or AdamW's 2 x fp32
    acts = dict(kinds)
    if backward:  # the state was allocated by step 1 outside any layer: not an activation
        acts["other"] = acts.get("other", 0.0) - state / GB
    result.update(
        parameters_gb=param_bytes / GB,
        gradients_gb=trainable / GB,
        optimizer_gb=pre / GB,
        activations_gb=acts,
        end_of_forward_gb=(param_bytes + pre) / GB + sum(acts.values()),
        forward_ops=forward_ops,
    )
    if not backward:
        result["forward_casts"] = forward_casts
    if backward:
        result["peak_gb"] = (param_bytes + alloc.peak) / GB
        result["backward_extra_gb"] = result["peak_gb"] - result["end_of_forward_gb"]
    return result


def cuda_estimate(recipe, batch: int, precision: str = "bf16", variant: str | None = None) -> dict:
    """Peak on one GPU: end of a fake-CUDA forward + the backward's extra from the fake-CPU step."""
    cpu = simulate(recipe, batch, "cpu", precision, backward=True, gpu_kernels=True, variant=variant)
    gpu = simulate(recipe, batch, "cuda", precision, backward=False, gpu_kernels=True, variant=variant)
    gpu["end_of_forward_gb"] += cpu["optimizer_gb"] - gpu["optimizer_gb"]  # the state step 1 made
    gpu["optimizer_gb"] = cpu["optimizer_gb"]
    gpu["backward_extra_gb"] = cpu["backward_extra_gb"]
    gpu["peak_gb"] = gpu["end_of_forward_gb"] + gpu["backward_extra_gb"]
    return {"cuda": gpu, "cpu_step": cpu}


# ----------------------------------------------------------------------------- validation on CPU
def measure_cpu_child(overrides: list[str], batch: int, precision: str, steps: int = 2) -> dict:
    """In this process (started by `measure_cpu`): real steps on the CPU; peak RSS above the RSS
    before the model was built."""
    recipe = paper_recipe(overrides)
    vocab = recipe.model.text.vocab_size
    base = _rss_now()
    model = SCLModel(recipe.model, vocab, 1).train()
    step = TrainStep(model, build_objectives(recipe.objectives), recipe.masking, synthetic_spec(vocab))
    optimizer = build_optimizer(model, recipe.optim, model.param_group, "cpu")
    data = synthetic_batch(recipe, batch, vocab, torch.device("cpu"))
    dtype = {"bf16": torch.bfloat16}.get(precision)
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
            total = step(dict(data))["total"]
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_gb": (peak - base) / GB, "seconds_per_step": (time.perf_counter() - start) / steps}


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_cpu(overrides: list[str], batch: int, precision: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    cmd = [sys.executable, __file__, "--measure-child", "--batch", str(batch), "--precision", precision]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report
def table(plan: dict) -> list[str]:
    acts = plan["activations_gb"]
    rows = [
        ("parameters (fp32)", plan["parameters_gb"]),
        ("gradients (fp32, at most)", plan["gradients_gb"]),
        ("AdamW state", plan["optimizer_gb"]),
    ]
    rows += [(f"activations: {k}", acts.get(k, 0.0)) for k in (*KINDS, "weight_copies", "other")]
    rows.append(("end of forward (parameters + state + activations)", plan["end_of_forward_gb"]))
    if "peak_gb" in plan:
        rows.append(("backward on top (from the fake-CPU step)", plan["backward_extra_gb"]))
        rows.append(("peak (estimate)", plan["peak_gb"]))
    lines = [f"  {name:<48} {value:7.2f} GB" for name, value in rows]
    if "forward_casts" in plan:
        casts = plan["forward_casts"]
        lines.append(f"  forward: {plan['forward_ops']} aten ops (~ kernel launches), of which casts: "
                     f"{casts['weights']} of weights, {casts['activations']} of activations")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--validate", action="store_true", help="also measure a shrunk recipe for real on the CPU")
    p.add_argument("--validate-batch", type=int, default=8)
    p.add_argument(
        "--what-if", action="store_true", help="also estimate the changes in WHAT_IF at the same batch"
    )
    p.add_argument("--measure-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.measure_child:
        print(json.dumps(measure_cpu_child(VALIDATION, args.batch, args.precision)))
        return 0

    out: dict = {"torch": torch.__version__, "h200_measured_gb": H200}
    started = time.perf_counter()
    eager = cuda_estimate(paper_recipe(), args.batch, args.precision)
    ckpt = cuda_estimate(
        paper_recipe(["topology.activation_checkpointing=true"]), 2 * args.batch, args.precision
    )
    out[f"paper_b{args.batch}"] = eager
    out[f"paper_b{2 * args.batch}_checkpointing"] = ckpt
    print(f"paper recipe, batch {args.batch}, one GPU, {args.precision} (estimate):")
    print("\n".join(table(eager["cuda"])))
    print(f"paper recipe, batch {2 * args.batch}, activation checkpointing (estimate):")
    print("\n".join(table(ckpt["cuda"])))
    if args.what_if:
        base = eager["cuda"]
        out["what_if"] = {}
        print(f"what if (batch {args.batch}; against {base['peak_gb']:.2f} GB, {base['forward_ops']} forward ops,"
              f" casts {base['forward_casts']}):")  # fmt: skip
        for name, description in WHAT_IF.items():
            plan = cuda_estimate(paper_recipe(), args.batch, args.precision, variant=name)["cuda"]
            out["what_if"][name] = {"description": description, **plan}
            print(f"  {description:<84} {plan['peak_gb']:6.2f} GB ({plan['peak_gb'] - base['peak_gb']:+.2f}),"
                  f" forward ops {plan['forward_ops'] - base['forward_ops']:+d},"
                  f" activation casts {plan['forward_casts']['activations'] - base['forward_casts']['activations']:+d}")  # fmt: skip
    if args.validate:
        runs = []
        for precision in ("fp32", "bf16"):
            recipe = paper_recipe(VALIDATION)
            estimate = simulate(
                recipe, args.validate_batch, "cpu", precision, backward=True, gpu_kernels=False
            )
            measured = measure_cpu(VALIDATION, args.validate_batch, precision)
            runs.append({
                "precision": precision, "batch": args.validate_batch, "overrides": VALIDATION,
                "estimate_gb": estimate["peak_gb"], "measured_peak_rss_gb": measured["peak_gb"],
                "error": estimate["peak_gb"] / measured["peak_gb"] - 1,
                "seconds_per_step": measured["seconds_per_step"], "estimate": estimate,
            })  # fmt: skip
            print(f"validation ({precision}, batch {args.validate_batch}): estimate {estimate['peak_gb']:.2f} GB, "
                  f"measured {measured['peak_gb']:.2f} GB ({100 * runs[-1]['error']:+.1f}%)")  # fmt: skip
        out["validation"] = runs
    out["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, out)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
