"""What a recipe's training step costs before it runs: FLOPs per sample and memory per device,
worked out on the meta device (shapes only: no memory, no arithmetic, any size), and a few timed
real steps. Shared by `scl bench pretrain`, `scl pretrain --dry-run` and the automatic micro-batch.

Memory at the micro-batch, per device, in the recipe's precision:
- parameters, buffers: as stored (fp32; autocast keeps the master weights in fp32);
- gradients: one fp32 tensor per trainable parameter;
- AdamW state: two fp32 moments per trainable parameter (plus one temporary of the same size
  inside a non-fused step);
- activations: the peak of what one forward and backward of the step keeps alive besides the
  parameters and optimizer state (saved activations, temporaries, attention, losses, gradients
  as they appear), found by replaying the step on fake tensors (sizes without memory) and
  following every storage it creates until it is freed. 16-bit precision replays under CPU
  autocast (matmuls in 16 bits, as on a GPU); attention is replayed as a fused kernel (output and
  softmax statistics kept, not the attention matrix), as SDPA runs on real devices.
Checked against measurements: `recipes/tiny.toml` on CPU, fp32, batch 32: 401 MB estimated,
402 MB measured (the CPU allocator's peak, `tests/training/test_estimate.py`); the paper setting,
bf16, batch 32: 27.8 GB estimated, 31.1 GB measured on an H200 (README, Speed).
"""

from __future__ import annotations

import contextlib
import resource
import time
import weakref
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from scl_cli.config import Recipe
from scl_cli.data.tokenizer import load_tokenizer
from scl_cli.errors import DataError, UsageError
from scl_cli.model import SCLModel
from scl_cli.objectives import build_objectives
from scl_cli.objectives.masking import TextSpec
from scl_cli.training.freeze import unreachable_parameters
from scl_cli.training.step import TrainStep

SPECIAL_TOKENS = 5  # <s> <pad> </s> <unk> <mask>, as the shapes tokenizer lays them out
ADAMW_STATES = 2  # exp_avg, exp_avg_sq


def synthetic_spec(vocab_size: int) -> TextSpec:
    """Masking needs only special ids and word starts; every other token starts a word here."""
    word_start = torch.ones(vocab_size, dtype=torch.bool)
    return TextSpec(vocab_size, 1, 4, torch.arange(SPECIAL_TOKENS), word_start)


def synthetic_batch(
    recipe: Recipe, batch: int, vocab: int, device: torch.device, frames: int = 1
) -> dict[str, torch.Tensor]:
    """Random captions of half to full length and random uint8 images, as the loader yields them."""
    v = recipe.model.vision
    L = recipe.model.text.max_len
    ids = torch.randint(SPECIAL_TOKENS, vocab, (batch, L))
    lengths = torch.randint(L // 2, L + 1, (batch,))
    pos = torch.arange(L)[None, :]
    ids[:, 0] = 0
    ids = torch.where(pos == lengths[:, None] - 1, torch.full_like(ids, 2), ids)
    mask = (pos < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, 1))
    images = torch.randint(0, 256, (batch, frames, 3, v.image_size, v.image_size), dtype=torch.uint8)
    return {k: t.to(device) for k, t in {"images": images, "text_ids": ids, "text_mask": mask}.items()}


def vocab_and_spec(recipe: Recipe) -> tuple[int, TextSpec, int, object | None]:
    """(vocabulary size, masking spec, pad id, tokenizer or None): `model.text.vocab_size` when the
    recipe sets it (no tokenizer needed), else the recipe's tokenizer."""
    vocab = recipe.model.text.vocab_size
    if vocab is not None:
        return vocab, synthetic_spec(vocab), 1, None
    try:
        tok = load_tokenizer(recipe.model.text.tokenizer, recipe.data.root, recipe.data.train[0])
    except DataError as err:
        raise UsageError(f"{err} (or set model.text.vocab_size to estimate without a tokenizer)") from None
    return tok.vocab_size, TextSpec.from_tokenizer(tok), tok.pad_id, tok


def meta_step(recipe: Recipe, vocab: int, pad: int, spec: TextSpec) -> TrainStep:
    """The recipe's training step over a shape-only (meta device) model."""
    meta = torch.device("meta")
    with meta:
        model = SCLModel(recipe.model, vocab, pad)
    if recipe.topology.activation_checkpointing:
        model.set_gradient_checkpointing(True)
    return TrainStep(model, build_objectives(recipe.objectives), recipe.masking, spec.to(meta))


def step_flops(recipe: Recipe, vocab: int, pad: int, spec: TextSpec, batch: int) -> float:
    """FLOPs of one training step (forward + backward) on `batch` samples, counted on a meta-device
    copy of the model: no memory, no arithmetic, any size. Attention counts as its matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    step = meta_step(recipe, vocab, pad, spec)
    meta = torch.device("meta")
    data = {k: v.to(meta) for k, v in synthetic_batch(recipe, batch, vocab, torch.device("cpu")).items()}
    counter = FlopCounterMode(display=False)
    with counter:
        step(data)["total"].backward()
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------- memory
class _LiveBytes(TorchDispatchMode):
    """Follows every storage the dispatched ops create until Python frees it: a timeline of live
    bytes (works on meta and fake tensors, whose storages have sizes but no data)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, int]] = {}  # storage address -> (id, bytes)
        self.events: list[tuple[int, int]] = []  # (id, +bytes or -bytes)

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        address = storage._cdata
        if address in self.live:
            return
        uid, size = len(self.events), storage.nbytes()  # addresses are reused after a free: ids are not
        self.live[address] = (uid, size)
        self.events.append((uid, size))
        weakref.finalize(storage, self._free, address)

    def _free(self, address: int) -> None:
        found = self.live.pop(address, None)
        if found is not None:
            self.events.append((found[0], -found[1]))

    def id_of(self, tensor: torch.Tensor) -> int | None:
        found = self.live.get(tensor.untyped_storage()._cdata)
        return None if found is None else found[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item)
        return out

    def peak(self, scale: dict[int, float] | None = None) -> int:
        """Largest live total; `scale` weighs chosen storages (0 leaves them out)."""
        scale = scale or {}
        live = best = 0.0
        for key, delta in self.events:
            live += delta * scale.get(key, 1.0)
            best = max(best, live)
        return int(best)


class _FusedAttention(TorchFunctionMode):
    """On meta and fake tensors SDPA often takes its reference path, which keeps every attention
    matrix for the backward; real devices run a fused kernel that keeps only the output and the
    softmax statistics. Replay with one (the CPU flash kernel's shapes stand for every device's).
    A function mode, not a patched attribute: nothing outside the replay ever sees it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            return self._fused(*args, **kwargs)
        return func(*args, **kwargs)

    @staticmethod
    def _fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        if attn_mask is not None and attn_mask.dtype != query.dtype:
            attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
        )[0]


@dataclass
class MemoryEstimate:
    """Bytes per device at one micro-batch (see the module docstring for what each part counts)."""

    micro_batch: int
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    total: int
    trainable: int  # trainable parameters (count)
    precision: str

    def rows(self) -> list[list[str]]:
        def gb(n: int) -> str:
            return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"

        return [
            ["parameters", gb(self.parameters)],
            ["gradients", gb(self.gradients)],
            ["AdamW state", gb(self.optimizer)],
            [f"activations (micro-batch {self.micro_batch}, {self.precision})", gb(self.activations)],
            ["total per device", gb(self.total)],
        ]


def estimate_memory(
    recipe: Recipe,
    vocab: int,
    pad: int,
    spec: TextSpec,
    micro_batch: int,
    precision: str = "fp32",
    frames: int = 1,
    fused_optimizer: bool = False,
    accumulating: bool = False,
) -> MemoryEstimate:
    """Per-device memory of the recipe's training step at `micro_batch` (module docstring);
    `accumulating`: gradients of earlier micro-batches are alive during the forward."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    # Fake CPU tensors: sizes without memory, like meta ones, but CPU autocast applies to them.
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        model = SCLModel(recipe.model, vocab, pad)
    if recipe.topology.activation_checkpointing:
        model.set_gradient_checkpointing(True)
    step = TrainStep(model, build_objectives(recipe.objectives), recipe.masking, spec)
    frozen = set(unreachable_parameters(model, step.objectives, recipe.masking, spec, frames))
    params = list(model.named_parameters())
    parameters = sum(p.numel() * p.element_size() for _, p in params)
    parameters += sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = sum(p.numel() for name, p in params if name not in frozen)
    gradients = 4 * trainable
    optimizer = ADAMW_STATES * 4 * trainable
    for name, p in params:
        p.requires_grad_(name not in frozen)
    model.train()
    batch = {k: fake.from_tensor(v) for k, v in synthetic_batch(recipe, micro_batch, vocab, torch.device("cpu"),
                                                                 frames).items()}  # fmt: skip
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast("cpu", dtype=low) if low is not None else contextlib.nullcontext()
    tracker = _LiveBytes()
    # Activation checkpointing recomputes layers outside the function mode, and checks that the
    # recomputation saves what the forward saved: replay it with SDPA as it comes (only one layer's
    # attention matrices are alive at a time then, so the overcount stays small).
    fused = contextlib.nullcontext() if recipe.topology.activation_checkpointing else _FusedAttention()
    with fused, fake, tracker:
        with autocast:
            total = step(batch)["total"]
        total.backward()
    grads = [tracker.id_of(p.grad) for _, p in params if p.grad is not None]
    activations = tracker.peak({uid: 0.0 for uid in grads if uid is not None})
    one_micro = tracker.peak()
    # With accumulation, earlier micro-batches' gradients are alive during the next forward.
    fwd_bwd = max(one_micro, gradients + activations) if accumulating else one_micro
    optimizer_step = gradients + (0 if fused_optimizer else 4 * trainable)  # + a temporary moment
    if recipe.topology.strategy == "fsdp" and recipe.topology.world_size > 1:
        world = recipe.topology.world_size  # sharded; one layer at a time is gathered
        parameters, gradients, optimizer = parameters // world, gradients // world, optimizer // world
    total = parameters + optimizer + max(fwd_bwd, optimizer_step)
    return MemoryEstimate(
        micro_batch=micro_batch,
        parameters=parameters,
        gradients=gradients,
        optimizer=optimizer,
        activations=max(total - parameters - gradients - optimizer, 0),
        total=total,
        trainable=trainable,
        precision=precision,
    )


# ----------------------------------------------------------------------------- timing
def peak_memory_bytes(device: torch.device) -> int:
    """CUDA allocator peak; process RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def time_steps(one_step, device: torch.device, steps: int, warmup: int) -> tuple[float, int]:
    """(seconds per step, peak memory in bytes) of `steps` calls of `one_step` after `warmup`."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        one_step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync()
    return (time.perf_counter() - start) / max(steps, 1), peak_memory_bytes(device)


def optimizer_step_fn(step_module, optimizer, batch, runtime):
    """One forward, backward and AdamW step of `step_module` on `batch` (for timing and probing)."""

    def one_step() -> None:
        with runtime.autocast() if runtime is not None else contextlib.nullcontext():
            total = step_module(batch)["total"]
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return one_step
