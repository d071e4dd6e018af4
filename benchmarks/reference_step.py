"""Time the paper's own pre-training step (IIGROUP/SCL, CVPR 2023) for the side-by-side ratio in
`benchmarks/gpu_check.sh` (stage `reference`, run when SCL_REFERENCE points at a copy of that code).

    python benchmarks/reference_step.py PATH [--batch 32] [--steps 10] [--warmup 3]
                                             [--precision bf16] [--device auto] [--json OUT]

PATH is a checkout of https://github.com/IIGROUP/SCL (nothing of it is copied into scl). The script
imports its `SCLTransformer` with the released pre-training config (`config_dict["pretrain"]`: ITM,
MLM, ITC, global and local SCL, ViT-B/16 at 288 px with 11 blocks, RoBERTa-base, 6+6 fusion layers),
initialises it at random, and times `training_step` (every loss the released code computes, with
its own passes: about five full ViT passes per sample), backward and AdamW on one synthetic batch
in a one-process group, as `scl bench pretrain --json` times ours. It prints and writes the same
JSON fields (samples_per_s, step_time_s, peak_memory_gb, flops_per_sample, mfu, ...), plus
`reference`: the commit, the losses and the adaptations below.

The released code cannot run as published on a current stack, and not at all without its authors'
files. What this script changes, all listed under `reference.adaptations` in the JSON:
- random initialisation instead of the hard-coded checkpoint paths (`/apdcephfs/...` RoBERTa and CLIP);
- `pytorch_lightning` (1.3.2, which needs torch < 2) is replaced by a stand-in `LightningModule` that
  keeps `hparams` and turns `log` and the metric objects into no-ops: the timed step is the model's
  forward over every loss, backward and AdamW, without Lightning's logging (so the reference is, if
  anything, timed faster than it ran);
- the config's missing keys (`loss_names["scl"]`, `msm_temp` = the paper's 0.03, the `msm` metric)
  are filled in; `vlc.modules.objectives` (a package absent from the repository) is its own
  `scl.modules.objectives`;
- transformers' docstring decorators become identities (4.6's arguments are refused by 5.x); only
  where the installed transformers lacks them: the helpers it moved (`apply_chunking_to_forward`
  ...), `AdamW`, `get_extended_attention_mask` (4.6's -10000 mask) and tuple outputs of RoBERTa
  layers; RoBERTa uses eager attention, as transformers 4.6 did; timm's `DropPath`/`to_2tuple`
  when timm is absent, and `einops` (imported, used only by the video model) when it is;
- torch's AdamW (foreach) instead of transformers' per-parameter loop; the image batch in the
  image model's [B, 3, H, W] layout (the released collate adds a frame axis for the video model).

Missing dependencies that cannot be stood in for (torch, transformers, numpy, tqdm) or any failure to
import or build the model end the script with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import inspect
import json
import subprocess
import sys
import tempfile
import time
import types
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scl_cli, when run from a checkout without installing it

from scl_cli.engines.bench_pretrain import PEAK_BF16_FLOPS, BenchReport  # noqa: E402
from scl_cli.io.atomic import atomic_write_json  # noqa: E402

REQUIRED = ("transformers", "numpy", "tqdm")
MASK_ID, PAD_ID, BOS_ID, EOS_ID, VOCAB = 50264, 1, 0, 2, 50265  # RoBERTa's ids, as the paper's code uses them


class ReferenceError(Exception):
    """Anything that stops the reference step: printed as one line, exit status 2."""


def one_line(err: BaseException) -> str:
    """`Type: first line of the message`."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, help="a checkout of github.com/IIGROUP/SCL")
    p.add_argument("--batch", type=int, default=32, help="samples per step (default 32)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="autocast dtype (default bf16, as scl's GPU check; the paper trained in fp16)")  # fmt: skip
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--tiny", action="store_true",
                   help="shrink every width and depth (a CPU check that the paper's code runs, in seconds)")  # fmt: skip
    args = p.parse_args(argv)
    if args.batch < 2 or args.steps < 1 or args.warmup < 0:
        p.error("--batch must be >= 2, --steps >= 1, --warmup >= 0")
    return args


# ----------------------------------------------------------------------------- finding the code
def check_checkout(path: Path) -> str:
    """The commit of the checkout ("unknown" without git metadata); raises if PATH is not one."""
    if not path.is_dir():
        raise ReferenceError(
            f"{path}: no such folder (SCL_REFERENCE / PATH must be a checkout of IIGROUP/SCL)"
        )
    for part in ("scl/modules/scl_module.py", "scl/config.py"):
        if not (path / part).is_file():
            raise ReferenceError(f"{path}: not a checkout of IIGROUP/SCL ({part} is missing)")
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_dependencies() -> None:
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ReferenceError(
                f"the paper's code needs {name}, which does not import here ({err})"
            ) from None


# ----------------------------------------------------------------------------- stand-ins
class AttributeDict(dict):
    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err


class _LightningModule(nn.Module):
    """What the paper's model uses of pytorch_lightning.LightningModule: hparams, log, device."""

    def save_hyperparameters(self) -> None:
        frame = inspect.currentframe().f_back
        self.hparams = AttributeDict(
            {k: v for k, v in frame.f_locals.items() if k not in ("self", "__class__")}
        )

    def log(self, *args, **kwargs) -> None:
        pass

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class _Metric(nn.Module):
    """pytorch_lightning.metrics.Metric with no work: the metric objects only feed `log`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def add_state(self, name, default, **kwargs) -> None:
        setattr(self, name, default)

    def forward(self, *args, **kwargs):
        return None


def _not_used(*args, **kwargs):
    raise NotImplementedError("not part of the image pre-training step")


def _keep_docstring(*args, **kwargs):
    """A docstring decorator factory that changes nothing."""
    return lambda fn: fn


class _DropPath(nn.Module):
    """timm's stochastic depth (used only by the unused MAE decoder)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.drop_prob)
        return x * keep / (1 - self.drop_prob)


def install_stand_ins(adaptations: list[str]) -> None:
    """Modules and names the released code imports that a current stack lacks (see the docstring)."""
    pl = types.ModuleType("pytorch_lightning")
    pl.LightningModule = _LightningModule
    pl.metrics = types.ModuleType("pytorch_lightning.metrics")
    pl.metrics.Metric = _Metric
    sys.modules["pytorch_lightning"], sys.modules["pytorch_lightning.metrics"] = pl, pl.metrics
    adaptations.append("pytorch_lightning: stand-in LightningModule (hparams; log and metrics are no-ops)")

    vlc, vlc_modules = types.ModuleType("vlc"), types.ModuleType("vlc.modules")

    def _objectives(name):
        if name == "objectives":
            return importlib.import_module("scl.modules.objectives")
        raise AttributeError(name)

    vlc_modules.__getattr__ = _objectives
    vlc.modules = vlc_modules
    sys.modules["vlc"], sys.modules["vlc.modules"] = vlc, vlc_modules
    adaptations.append("vlc.modules.objectives -> scl.modules.objectives")

    try:
        with warnings.catch_warnings():  # timm >= 0.9 warns that the path moved
            warnings.simplefilter("ignore")
            importlib.import_module("timm.models.layers")
    except ImportError:
        timm, models, layers = (types.ModuleType(n) for n in ("timm", "timm.models", "timm.models.layers"))
        layers.DropPath, layers.to_2tuple = _DropPath, lambda x: x if isinstance(x, tuple) else (x, x)
        timm.models, models.layers = models, layers
        sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})
        adaptations.append("timm.models.layers: stand-in DropPath, to_2tuple")

    try:
        importlib.import_module("einops")
    except ImportError:
        einops = types.ModuleType("einops")
        einops.rearrange = _not_used  # imported by objectives.py, used only by the video model
        sys.modules["einops"] = einops
        adaptations.append("einops: stand-in (imported by objectives.py, used only by the video model)")

    file_utils = importlib.import_module("transformers.file_utils")
    for name in ("add_code_sample_docstrings", "add_start_docstrings", "add_start_docstrings_to_model_forward",
                 "replace_return_docstrings"):  # fmt: skip
        setattr(file_utils, name, _keep_docstring)
    adaptations.append("transformers.file_utils docstring decorators: identity (their arguments changed)")

    import numpy as np

    if "float" not in np.__dict__:  # removed in numpy 1.24; the MAE decoder's position table uses it
        np.float = float
        adaptations.append("numpy.float = float (removed in numpy 1.24)")

    modeling_utils = importlib.import_module("transformers.modeling_utils")
    optimization = importlib.import_module("transformers.optimization")
    try:
        pytorch_utils = importlib.import_module("transformers.pytorch_utils")
    except ImportError:
        pytorch_utils = None

    for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        if not hasattr(modeling_utils, name):
            setattr(modeling_utils, name, getattr(pytorch_utils, name, None) or _not_used)
            adaptations.append(f"transformers.modeling_utils.{name} (moved in this transformers)")
    if not hasattr(optimization, "AdamW"):
        optimization.AdamW = torch.optim.AdamW
        adaptations.append(
            "transformers.optimization.AdamW -> torch.optim.AdamW (not used by the timed step)"
        )


def extended_attention_mask(
    mask: torch.Tensor, input_shape=None, device=None, dtype=torch.float32
) -> torch.Tensor:
    """transformers 4.6's ModuleUtilsMixin.get_extended_attention_mask: [B, L] -> [B, 1, 1, L], 0 / -10000."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * -10000.0


class _TupleOutput(nn.Module):
    """A transformers 5 RoBERTa layer returns a tensor; the paper's code takes `layer(...)[0]`."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *args, **kwargs):
        out = self.layer(*args, **kwargs)
        return out if isinstance(out, tuple) else (out,)


# ----------------------------------------------------------------------------- the model
def paper_config(config_dict: dict, batch: int, tiny: bool, adaptations: list[str]) -> dict:
    config = copy.deepcopy(config_dict["pretrain"])
    config.update(load_path="", per_gpu_batchsize=batch, num_gpus=1, num_nodes=1, test_only=False)
    if "scl" not in config["loss_names"]:
        config["loss_names"]["scl"] = 0  # read by __init__; the losses are "mgsc" + "mltc"
        adaptations.append(
            'config: loss_names["scl"] = 0 (read by SCLTransformer.__init__, absent from the pretrain config)'
        )
    if tiny:
        config.update(hidden_size=64, num_heads=2, num_top_layer=1, num_layers=1, image_size=64)
        adaptations.append(
            "--tiny: width 64, 1 text and 1 fusion layer, 1 ViT block, 64 px (not the paper setting)"
        )
    return config


def build_reference_model(path: Path, batch: int, tiny: bool, adaptations: list[str]) -> nn.Module:
    """The paper's SCLTransformer with its pre-training config, randomly initialised."""
    sys.path.insert(0, str(path))
    try:
        scl_module = importlib.import_module("scl.modules.scl_module")  # first: its imports fail first
        clip_model = importlib.import_module("scl.modules.clip_model")
        config_dict = importlib.import_module("scl.config").config_dict
    except Exception as err:  # noqa: BLE001 - any import failure is one line for the user
        raise ReferenceError(f"cannot import the paper's model from {path}: {one_line(err)}") from None
    from transformers import RobertaConfig, RobertaModel

    config = paper_config(config_dict, batch, tiny, adaptations)
    width = config["hidden_size"]

    class RandomRoberta(RobertaModel):
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            rc = RobertaConfig(
                vocab_size=VOCAB, hidden_size=width, num_hidden_layers=config["num_layers"],
                num_attention_heads=config["num_heads"], intermediate_size=4 * width,
                max_position_embeddings=514, type_vocab_size=1, pad_token_id=PAD_ID,
                layer_norm_eps=1e-5, attn_implementation="eager",
            )  # fmt: skip
            return RobertaModel(rc)

    def random_clip(name, resolution_after=224):
        # ViT-B/16's dimensions (CLIP's text tower is not built: only `visual` is used); the
        # released Transformer keeps layers - 1 = 11 blocks.
        return clip_model.CLIP(
            512, 224, 2 if tiny else 12, width, 16, 77, 49408, 512, 8, 12, resolution_after,
            decoder_depth=1 if tiny else 8,
        )  # fmt: skip

    scl_module.RobertaModel, scl_module.build_model = RandomRoberta, random_clip
    adaptations.append("random init: RoBERTa-base and CLIP ViT-B/16 shapes, no checkpoint files")
    try:
        model = scl_module.SCLTransformer(config)
    except Exception as err:  # noqa: BLE001
        raise ReferenceError(f"cannot build the paper's model: {one_line(err)}") from None
    if not hasattr(model, "msm_temp"):
        model.msm_temp = 0.03  # the paper's SCL temperature (the module sets it as scl_temp, under "scl")
        adaptations.append(
            "msm_temp = 0.03 (compute_scl reads msm_temp; __init__ sets scl_temp only for 'scl')"
        )
    for phase in ("train", "val"):
        if not hasattr(model, f"{phase}_msm_loss"):
            setattr(model, f"{phase}_msm_loss", _Metric())
    text = model.text_transformer
    if not hasattr(text, "get_extended_attention_mask"):
        text.get_extended_attention_mask = extended_attention_mask
        adaptations.append("RoBERTa get_extended_attention_mask: transformers 4.6's (-10000) mask")
    probe = text.encoder.layer[0](torch.zeros(1, 2, width), extended_attention_mask(torch.ones(1, 2)))
    if not isinstance(probe, tuple):
        text.encoder.layer = nn.ModuleList(_TupleOutput(layer) for layer in text.encoder.layer)
        adaptations.append("RoBERTa layers return tuples, as in transformers 4.6")
    return model


def synthetic_batch(batch: int, image_size: int, max_len: int, device: torch.device, seed: int = 0) -> dict:
    """The keys the released collate gives the pre-training objectives: images (normalised float,
    [B, 3, H, W] in a list), a false image for ITM, RoBERTa ids of half to full length, the MLM
    variant (15% of the real tokens <mask>, labels there, -100 elsewhere) and the raw id lists."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max_len // 2, max_len + 1, (batch,), generator=g)
    pos = torch.arange(max_len)[None, :]
    real = pos < lengths[:, None]
    ids = torch.randint(5, MASK_ID, (batch, max_len), generator=g)
    ids[:, 0] = BOS_ID
    ids = torch.where(pos == lengths[:, None] - 1, torch.full_like(ids, EOS_ID), ids)
    ids = torch.where(real, ids, torch.full_like(ids, PAD_ID))
    inner = real & (pos > 0) & (pos < lengths[:, None] - 1)
    picked = inner & (torch.rand(batch, max_len, generator=g) < 0.15)
    out = {
        "text": ["a synthetic caption"] * batch,
        "text_ids": ids,
        "text_masks": real.long(),
        "text_labels": torch.full_like(ids, -100),
        "text_ids_mlm": torch.where(picked, torch.full_like(ids, MASK_ID), ids),
        "text_labels_mlm": torch.where(picked, ids, torch.full_like(ids, -100)),
    }
    out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    out["input_ids"] = ids.tolist()
    for key in ("image", "false_image_0"):
        out[key] = [torch.randn(batch, 3, image_size, image_size, generator=g).to(device)]
    return out


# ----------------------------------------------------------------------------- timing
def measure(step, batch: int, device: torch.device, steps: int, warmup: int, count_flops=None) -> dict:
    """Time `steps` calls of `step()` after `warmup`; peak memory of the timed steps (CUDA allocator;
    process peak RSS on CPU); FLOPs per sample from `count_flops()` when given. Returns the
    measured fields of a BenchReport."""
    import resource

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated(device) / 1e9
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    flops = count_flops() if count_flops is not None else 0.0
    return {"samples_per_s": batch / seconds, "step_time_s": seconds, "peak_memory_gb": peak_gb,
            "flops_per_sample": flops / batch}  # fmt: skip


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def report(measured: dict, device: torch.device, precision: str, batch: int, steps: int, parameters: int,
           reference: dict) -> dict:  # fmt: skip
    """The fields of `scl bench pretrain --json`, plus `reference`."""
    peak = device_peak_flops(device)
    achieved = measured["flops_per_sample"] * measured["samples_per_s"]
    bench = BenchReport(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        precision=precision, batch=batch, steps=steps, samples_per_s=measured["samples_per_s"],
        step_time_s=measured["step_time_s"], peak_memory_gb=measured["peak_memory_gb"],
        flops_per_sample=measured["flops_per_sample"], achieved_tflops=achieved / 1e12,
        mfu=achieved / peak if peak else None, parameters=parameters,
        peak_tflops=None if peak is None else peak / 1e12,
    )  # fmt: skip
    return {**asdict(bench), "reference": reference}


@contextlib.contextmanager
def one_process_group(device: torch.device):
    """The released losses all-gather unconditionally: a group of one process, as DDP on one GPU."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    with tempfile.TemporaryDirectory() as tmp:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def run(args: argparse.Namespace) -> dict:
    commit = check_checkout(args.path)
    check_dependencies()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ReferenceError("--device cuda but no CUDA device is visible")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as scl's runtime sets it
        torch.backends.cudnn.allow_tf32 = True
    adaptations: list[str] = []
    install_stand_ins(adaptations)
    torch.manual_seed(0)
    model = build_reference_model(args.path, args.batch, args.tiny, adaptations).to(device).train()
    config = model.hparams.config
    data = synthetic_batch(args.batch, config["image_size"], config["max_text_len"], device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config["learning_rate"], betas=(0.9, 0.98), eps=1e-8,
                                  weight_decay=config["weight_decay"])  # fmt: skip
    adaptations.append("torch.optim.AdamW (foreach) instead of transformers.AdamW")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    losses: list[str] = []
    last_total: list[float] = []

    def step() -> None:
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            # training_step sums every "*loss*" output; compute_scl rewrites batch["text_ids"]: a fresh dict
            total = model.training_step(dict(data), 0)
        if not losses:
            losses.extend(model.current_tasks)
        (scaler.scale(total) if scaler else total).backward()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last_total[:] = [total.detach()]

    def count_flops() -> float:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        return float(counter.get_total_flops())

    with one_process_group(device):
        try:
            measured = measure(step, args.batch, device, args.steps, args.warmup, count_flops)
        except Exception as err:  # noqa: BLE001
            raise ReferenceError(f"the paper's step failed: {one_line(err)}") from None
    reference = {
        "code": "https://github.com/IIGROUP/SCL", "path": str(args.path), "commit": commit,
        "losses": losses, "last_total_loss": float(last_total[0]), "optimizer": "torch.optim.AdamW (foreach)", "adaptations": adaptations,
        "tiny": args.tiny, "torch": torch.__version__,
        "transformers": importlib.import_module("transformers").__version__,
    }  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    return report(measured, device, args.precision, args.batch, args.steps, n_params, reference)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = run(args)
    except ReferenceError as err:
        print(f"reference_step: {err}", file=sys.stderr)
        return 2
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, out)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
