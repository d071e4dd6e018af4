"""A run's checkpoints: what config.json records, the `save_fn` the trainer calls on every rank,
and the rule that a folder already holding checkpoints is continued only when asked (`--resume`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from scl_cli import __version__
from scl_cli.config import Recipe, recipe_to_dict
from scl_cli.data.manifests import dataset_location, parse_source
from scl_cli.data.shards import MANIFEST
from scl_cli.errors import UsageError
from scl_cli.io import remote
from scl_cli.io.checkpoints import latest_checkpoint, save_checkpoint
from scl_cli.io.fingerprint import sha256_file, sha256_text
from scl_cli.io.provenance import git_state, machine, package_versions
from scl_cli.training.parallel import StateIO
from scl_cli.training.runtime import Runtime

if TYPE_CHECKING:
    from scl_cli.model import SCLModel


def existing_checkpoint(run_dir: Path, resume: bool) -> Path | None:
    """The newest checkpoint of `run_dir` to resume from, or None. A folder that already holds
    checkpoints is never trained over without `resume` (`UsageError` naming it)."""
    run_dir = Path(run_dir)
    found = latest_checkpoint(run_dir) if run_dir.exists() else None
    if found is not None and not resume:
        raise UsageError(
            f"{run_dir} already holds checkpoints (newest {found.name}): pass --resume to continue it, "
            "or choose another output.dir"
        )
    return found if resume else None


def checkpoint_config(recipe: Recipe, model: SCLModel, vqa_vocabulary: str | None = None) -> dict:
    """What config.json records: enough to rebuild the model without the recipe file — the
    architecture and the task heads (`model.task_heads.describe_heads`; `vqa_vocabulary`: the VQA
    answer file written beside the weights)."""
    from scl_cli.model.task_heads import describe_heads

    return {
        "format": "scl-checkpoint",
        "version": 1,
        "scl_version": __version__,
        "model": recipe.model.model_dump(mode="json"),
        "vocab_size": model.vocab_size,
        "pad_token_id": model.pad_token_id,
        "tokenizer": "tokenizer.json",
        "heads": describe_heads(model, vqa_vocabulary),
        "recipe": recipe_to_dict(recipe),
    }


def recipe_fingerprint(recipe: Recipe) -> str:
    """sha256 of the resolved recipe, where the run writes (`output.dir`) left out."""
    data = recipe_to_dict(recipe)
    data.get("output", {}).pop("dir", None)
    return sha256_text(json.dumps(data, sort_keys=True))


def reproduction_record(recipe: Recipe, runtime: Runtime, datasets: list[str], group: str = "splits") -> dict:
    """What `config.json["reproduction"]` records in every checkpoint of a run: the code (git
    commit, dirty tree), package versions, the sha256 of the resolved recipe and of every data
    manifest it trains on, the topology and the machine. `scl pretrain R --reproduce RUN` reads it."""
    import torch

    data = {}
    for spec in datasets:
        name, _ = parse_source(spec, group)
        path = remote.join(dataset_location(recipe.data.root, name), MANIFEST)
        data[spec] = {"manifest": str(path), "sha256": _manifest_sha256(path)}
    device = runtime.device
    topo = recipe.topology
    return {
        "git": git_state(),
        "packages": package_versions(),
        "recipe_sha256": recipe_fingerprint(recipe),
        "data": data,
        "topology": {
            "world_size": runtime.world_size,
            "nodes": topo.nodes,
            "devices_per_node": topo.devices_per_node,
            "strategy": topo.strategy,
            "precision": runtime.precision,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            "cuda": torch.version.cuda,
            "compile": topo.compile,
            "activation_checkpointing": topo.activation_checkpointing,
        },  # fmt: skip
        "machine": machine(),
    }


def _manifest_sha256(path: Path | str) -> str | None:
    if remote.is_url(path):
        try:
            return hashlib.sha256(remote.read_bytes(str(path))).hexdigest()
        except remote.RemoteError:
            return None
    return sha256_file(Path(path)) if Path(path).is_file() else None


def write_checkpoint_fn(
    run_dir: Path,
    model: nn.Module,
    config: dict,
    extra_files: dict,
    keep_last: int,
    runtime: Runtime,
    state_io: StateIO | None = None,
):
    """A `save_fn` for Trainer: rank 0 writes, every rank waits until the checkpoint is complete.
    Call it on every rank (under FSDP gathering the full state dict is a collective)."""
    state_io = state_io or StateIO()

    def save(step: int, training_state: dict) -> Path | None:
        path = None
        state_dict = state_io.model_state()
        if runtime.is_main:
            path = save_checkpoint(
                run_dir,
                step,
                model,
                {**config, "step": step},
                training_state,
                extra_files,
                keep_last=keep_last,
                state_dict=state_dict,
            )
        if runtime.distributed:
            import torch.distributed as dist

            dist.barrier()
        return path

    return save
