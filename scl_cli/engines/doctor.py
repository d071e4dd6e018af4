"""Engine of `scl doctor [RECIPE]`: what a run needs, and whether this machine has it.

One row per need: Python, torch with its CUDA and NCCL builds, the GPUs and their memory, bf16,
the optional libraries (decord for video, PyAV, faiss), and with a recipe: the devices its topology
asks for, free disk at the output folder for the checkpoints it will keep, every data set it names
(manifest readable, shards on disk, enough shards for `world x num_workers` loader slots), the
initial weights (a local path or files in the Hugging Face cache), the tokenizer, and write access
to the output folder. A row is `ok`, `warn` (the run starts, but read this) or `fail` (it would
not start); every warn and fail says what to do. The report is `ok` when nothing failed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from scl_cli.config import Recipe
from scl_cli.errors import SclError

OK, WARN, FAIL = "ok", "warn", "fail"
CHECKPOINT_BYTES_PER_PARAMETER = 4 + 8  # fp32 weights + AdamW's two moments in training_state.pt


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    found: str
    fix: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def add(self, name: str, status: str, found: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, found, fix))

    def rows(self) -> list[list[str]]:
        return [[c.name, c.status.upper() if c.status != OK else OK, c.found, c.fix] for c in self.checks]


# ----------------------------------------------------------------------------- environment
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _environment(report: DoctorReport) -> dict:
    # scl itself needs 3.11 to import, so reaching here means the version is fine.
    report.add("python", OK, f"{sys.version.split()[0]} ({sys.executable})")
    try:
        import torch
    except ImportError as err:
        report.add("torch", FAIL, f"not importable ({err})", "pip install -c constraints.txt -e .")
        return {"gpus": [], "bf16": False}
    cuda_build = torch.version.cuda or "none (CPU build)"
    report.add("torch", OK, f"{torch.__version__}, CUDA build {cuda_build}")
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append((props.name, props.total_memory))
        nccl = ".".join(str(v) for v in torch.cuda.nccl.version()) if hasattr(torch.cuda, "nccl") else "?"
        report.add("NCCL", OK, nccl)
        listed = ", ".join(f"{name} {mem / 2**30:.0f} GiB" for name, mem in gpus)
        report.add("GPUs", OK, f"{len(gpus)}: {listed}")
        bf16 = torch.cuda.is_bf16_supported()
        report.add("bf16", OK if bf16 else WARN, "supported" if bf16 else "not supported",
                   "" if bf16 else "precision 'auto' uses fp16 with loss scaling here")  # fmt: skip
    else:
        report.add("GPUs", WARN, "none visible (CPU only)",
                   "fine for recipes/tiny.toml; a paper-size run needs GPUs (check the driver and "
                   "CUDA_VISIBLE_DEVICES)")  # fmt: skip
        bf16 = False
    for module, dist, use in (("decord", "decord", "video data sets (clips)"), ("av", "av", "writing clips"),
                              ("faiss", "faiss-cpu", "scl index / scl retrieve")):  # fmt: skip
        if importlib.util.find_spec(module) is None:
            report.add(module, WARN, "missing", f"needed for {use}: pip install {dist}")
        else:
            report.add(module, OK, _version(dist) or _version(module) or "installed")
    return {"gpus": gpus, "bf16": bf16}


# ----------------------------------------------------------------------------- recipe
def _devices(report: DoctorReport, recipe: Recipe, env: dict) -> None:
    topo = recipe.topology
    gpus = env["gpus"]
    per_node = topo.devices_per_node
    where = f"topology: {topo.nodes} node(s) x {per_node} device(s), device '{topo.device}'"
    if topo.device == "cuda" and not gpus:
        report.add(
            "devices", FAIL, f"{where}; no GPU visible", "use --set topology.device=cpu, or a GPU machine"
        )
    elif gpus and topo.device != "cpu" and len(gpus) < per_node:
        report.add("devices", FAIL, f"{where}; {len(gpus)} GPU(s) visible",
                   f"--set topology.devices_per_node={len(gpus)} (the global batch stays; accumulation grows)")  # fmt: skip
    elif not gpus and per_node > 1:
        report.add("devices", WARN, f"{where}; no GPU: {per_node} CPU processes (gloo)",
                   "--set topology.devices_per_node=1 unless a multi-process CPU run is meant")  # fmt: skip
    else:
        report.add("devices", OK, where)
    if topo.precision == "fp16" and not gpus:
        report.add("precision", FAIL, "fp16 without a GPU", "--set topology.precision=fp32 (or bf16)")
    elif topo.precision == "bf16" and gpus and not env["bf16"]:
        report.add(
            "precision", FAIL, "bf16 asked, the GPU lacks it", "--set topology.precision=fp16 (or auto)"
        )
    else:
        report.add("precision", OK, topo.precision)


def _data(report: DoctorReport, recipe: Recipe) -> set[str]:
    from scl_cli.data.manifests import check_slots, load_sources
    from scl_cli.data.shard_cache import configure_remote
    from scl_cli.io import remote

    data = recipe.data
    configure_remote(data)
    names, split, group = data.train, data.split, "splits"
    if recipe.task is not None:  # fine-tuning reads the task's data set
        names, split, group = [recipe.task.dataset], recipe.task.train_split, recipe.task.group
    media = set()
    for name in names:
        try:
            sources = load_sources(data.root, [name], split, group)
            check_slots(sources, recipe.topology.world_size, data.num_workers, split, data.root)
        except SclError as err:
            report.add(f"data: {name}", FAIL, str(err).split(" — ")[0], _fix_of(str(err)))
            continue
        src = sources[0]
        media.add(src.media)
        slots = recipe.topology.world_size * max(data.num_workers, 1)
        where = ""
        if src.shards and remote.is_url(src.shards[0].path):  # one request: the first shard is there
            first = str(src.shards[0].path)
            try:
                if remote.size(first) is None:
                    report.add(f"data: {name}", FAIL, f"{first}: listed in the manifest but missing",
                               "prepare the data set again, or upload it again (scl prepare --out URL)")  # fmt: skip
                    continue
            except SclError as err:
                report.add(f"data: {name}", FAIL, str(err), "check the URL, the network and the credentials")
                continue
            cache = (
                f"cached in {data.cache_dir}" if data.cache_dir is not None else "no cache (data.cache_dir)"
            )
            where = f", streamed from {src.location} ({cache})"
        report.add(f"data: {name}", OK, f"{split}: {src.samples:,} {src.media} samples in {len(src.shards)} "
                                        f"shards for {slots} loader slot(s){where}")  # fmt: skip
    return media


def _fix_of(message: str) -> str:
    return message.split(" — ", 1)[1] if " — " in message else "see the message"


def _hub_cached(repo: str, files: list[str]) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in files:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    return None


def _offline() -> bool:
    return any(
        os.environ.get(v, "") not in ("", "0", "false") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _weights(report: DoctorReport, label: str, source: str, hub_repo: str | None, files: list[str]) -> None:
    path = Path(source).expanduser()
    if path.exists():
        report.add(label, OK, f"{path} (local)")
        return
    if source.startswith(("/", "./", "../", "~")) or source.endswith(
        (".pt", ".bin", ".safetensors", ".json")
    ):
        report.add(label, FAIL, f"{source}: no such file or folder", "fix the path in the recipe")
        return
    cached = _hub_cached(hub_repo or source, files)
    if cached:
        report.add(label, OK, f"{hub_repo or source} (Hugging Face cache)")
    elif _offline():
        report.add(label, FAIL, f"{hub_repo or source}: not in the Hugging Face cache, and the hub is off "
                                "(HF_HUB_OFFLINE)", "download it once while online, or point the recipe at a "
                                "local copy")  # fmt: skip
    else:
        report.add(label, WARN, f"{hub_repo or source}: not cached; downloaded when the run starts",
                   "needs the network on every node (or download once and point the recipe at the folder)")  # fmt: skip


def _initial_weights(report: DoctorReport, recipe: Recipe) -> None:
    model = recipe.model
    if model.init != "pretrained":
        report.add("initial weights", OK, f"model.init = '{model.init}': none needed")
        return
    vision = model.vision.weights
    repo = None
    if not Path(vision).expanduser().exists() and not vision.startswith("hf-hub:"):
        try:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(vision)
            repo = cfg.hf_hub_id if cfg is not None else None
        except Exception:  # noqa: BLE001 - an unknown name is reported as not found below
            repo = None
    repo = repo or vision.removeprefix("hf-hub:")
    _weights(report, "vision weights", vision, repo,
             ["model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"])  # fmt: skip
    _weights(report, "text weights", model.text.weights, None, ["model.safetensors", "pytorch_model.bin"])


def _tokenizer(report: DoctorReport, recipe: Recipe) -> int | None:
    """Checks the tokenizer; returns its vocabulary size when it was read."""
    from scl_cli.data.tokenizer import load_tokenizer

    spec = recipe.model.text.tokenizer
    if spec == "dataset" or Path(spec).expanduser().exists():
        try:
            tok = load_tokenizer(spec, recipe.data.root, recipe.data.train[0])
        except SclError as err:
            report.add("tokenizer", FAIL, str(err).split(" — ")[0], _fix_of(str(err)))
            return None
        report.add("tokenizer", OK, f"{tok.source} ({tok.vocab_size:,} tokens)")
        return tok.vocab_size
    _weights(report, "tokenizer", spec, None, ["tokenizer.json", "vocab.json"])
    return None


def _parameters(recipe: Recipe, vocab: int | None) -> int | None:
    if recipe.task is not None:  # fine-tuning: the architecture is the checkpoint's, not the recipe's
        return None
    try:
        import torch

        from scl_cli.model import SCLModel

        with torch.device("meta"):
            model = SCLModel(recipe.model, recipe.model.text.vocab_size or vocab or 50265, 1)
        return model.num_parameters()
    except Exception:  # noqa: BLE001 - the size is only for the disk estimate
        return None


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _output(report: DoctorReport, recipe: Recipe, vocab: int | None) -> None:
    out = Path(recipe.output.dir)
    parent = _existing_parent(out)
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".scl-doctor-"):
            pass
        report.add(
            "write access", OK, f"{out} ({'exists' if out.exists() else 'created under ' + str(parent)})"
        )
    except OSError as err:
        report.add("write access", FAIL, f"{parent}: {err.strerror or err}",
                   "choose an output.dir this user may write to")  # fmt: skip
    from scl_cli.io.checkpoints import latest_checkpoint

    found = latest_checkpoint(out) if out.is_dir() else None
    if found is not None:
        report.add("output folder", WARN, f"{out} already holds checkpoints (newest {found.name})",
                   "scl pretrain ... --resume continues it; otherwise choose another output.dir")  # fmt: skip
    params = _parameters(recipe, vocab)
    free = shutil.disk_usage(parent).free
    if params is None:
        report.add("free disk", OK, f"{_size(free)} at {parent}")
        return
    need = (
        params * CHECKPOINT_BYTES_PER_PARAMETER * (recipe.output.keep_last + 1)
    )  # +1: the one being written
    found_text = (f"{_size(free)} free at {parent}; {recipe.output.keep_last} kept checkpoint(s) + one being "
                  f"written need about {_size(need)}")  # fmt: skip
    if free < need:
        report.add(
            "free disk",
            FAIL,
            found_text,
            "free some space, lower output.keep_last, or choose another output.dir",
        )
    elif free < 2 * need:
        report.add("free disk", WARN, found_text, "little room left for logs and data: consider more space")
    else:
        report.add("free disk", OK, found_text)


def doctor(recipe: Recipe | None = None) -> DoctorReport:
    """Check this machine, and with `recipe` everything that run needs (module docstring)."""
    report = DoctorReport()
    env = _environment(report)
    if recipe is None:
        return report
    _devices(report, recipe, env)
    media = _data(report, recipe)
    if "video" in media and importlib.util.find_spec("decord") is None:
        report.add("video decoding", FAIL, "the recipe reads clips; decord is missing", "pip install decord")
    vocab = None
    if recipe.task is None:
        _initial_weights(report, recipe)
        vocab = _tokenizer(report, recipe)
    else:
        report.add(
            "initial weights", OK, "the checkpoint given to `scl finetune --ckpt` (weights and tokenizer)"
        )
    _output(report, recipe, vocab)
    return report
