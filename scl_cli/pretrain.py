"""Engine of `scl pretrain`: build everything a recipe names, then hand it to the Trainer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scl_cli import __version__
from scl_cli.data.loader import check_pretrain_data
from scl_cli.data.tokenizer import TextTokenizer, load_tokenizer
from scl_cli.errors import UsageError
from scl_cli.objectives import build_objectives
from scl_cli.recipe import Recipe, recipe_to_dict, recipe_to_toml
from scl_cli.reporting import NullReporter, Reporter
from scl_cli.training import launch
from scl_cli.training.checkpoint import latest_checkpoint
from scl_cli.training.masking import TextSpec
from scl_cli.training.metrics import METRICS_FILE
from scl_cli.training.parallel import transformer_layers
from scl_cli.training.pretrain_step import PretrainStep
from scl_cli.training.run import run_training
from scl_cli.training.runtime import Runtime, seed_everything, setup_runtime
from scl_cli.training.trainer import TrainResult

if TYPE_CHECKING:
    from scl_cli.model import SCLModel


def text_spec(tokenizer: TextTokenizer, vocab_size: int) -> TextSpec:
    return TextSpec(
        vocab_size, tokenizer.pad_id, tokenizer.mask_id, tokenizer.special_ids, tokenizer.word_start
    )


def build_model(recipe: Recipe, tokenizer: TextTokenizer) -> SCLModel:
    # Imported here: transformers takes seconds to import, which a launcher process never needs.
    from scl_cli.model import SCLModel

    vocab = recipe.model.text.vocab_size or tokenizer.vocab_size
    if vocab < tokenizer.vocab_size:
        raise UsageError(
            f"model.text.vocab_size {vocab} is smaller than the tokenizer's vocabulary ({tokenizer.vocab_size})"
        )
    return SCLModel.from_recipe_model(recipe.model, vocab, tokenizer.pad_id)


def checkpoint_config(recipe: Recipe, model: SCLModel) -> dict:
    """What config.json records: enough to rebuild the model without the recipe file."""
    return {
        "format": "scl-checkpoint",
        "version": 1,
        "scl_version": __version__,
        "model": recipe.model.model_dump(mode="json"),
        "vocab_size": model.vocab_size,
        "pad_token_id": model.pad_token_id,
        "tokenizer": "tokenizer.json",
        "recipe": recipe_to_dict(recipe),
    }


@dataclass
class Built:
    runtime: Runtime
    tokenizer: TextTokenizer
    model: SCLModel
    step_module: PretrainStep


def make_step_module(recipe: Recipe, model: SCLModel, spec: TextSpec, runtime: Runtime) -> PretrainStep:
    """Apply the topology's speed options to `model` and wrap it with the enabled objectives."""
    model.to(runtime.device)
    if recipe.topology.activation_checkpointing:
        model.set_gradient_checkpointing(True)
    if recipe.topology.compile:
        for layer in transformer_layers(model):
            layer.compile(backend=recipe.topology.compile_backend)
    objectives = build_objectives(recipe.objectives)
    return PretrainStep(model, objectives, recipe.masking, spec.to(runtime.device), seed=recipe.optim.seed)


def build(recipe: Recipe) -> Built:
    """Runtime, tokenizer, model and step module for a recipe."""
    runtime = setup_runtime(recipe.topology)
    seed_everything(recipe.optim.seed)
    tokenizer = load_tokenizer(recipe.model.text.tokenizer, recipe.data.root, recipe.data.train[0])
    model = build_model(recipe, tokenizer)
    step = make_step_module(recipe, model, text_spec(tokenizer, model.vocab_size), runtime)
    return Built(runtime, tokenizer, model, step)


def pretrain(
    recipe: Recipe,
    resume: bool = False,
    reporter: Reporter | None = None,
    launch_args: list[str] | None = None,
) -> TrainResult:
    """Pre-train as the recipe says; with `resume`, continue from the newest complete checkpoint.

    A topology of several processes started outside torchrun is launched through torchrun
    (see `training.launch`): `launch_args` are the `scl` arguments each process gets (the CLI
    passes its own; by default the resolved recipe is written to OUTPUT/launch-recipe.toml).
    """
    reporter = reporter or NullReporter()
    run_dir = Path(recipe.output.dir)
    found = latest_checkpoint(run_dir) if run_dir.exists() else None
    if found is not None and not resume:
        raise UsageError(
            f"{run_dir} already holds checkpoints (newest {found.name}): pass --resume to continue it, "
            "or choose another output.dir"
        )
    launch.adopt_slurm_tasks(recipe.topology)
    if launch.needs_launch(recipe.topology):
        return _launch(recipe, resume, reporter, launch_args)

    b = build(recipe)
    if resume and found is None:
        reporter.info(f"no checkpoint in {run_dir}: starting from step 0")
    result = run_training(
        recipe, b.model, b.tokenizer, b.step_module, b.runtime, run_dir,
        resume_from=found if resume else None,
        datasets=recipe.data.train, split=recipe.data.split,
        config=checkpoint_config(recipe, b.model), reporter=reporter,
    )  # fmt: skip
    b.runtime.teardown()
    return result


def _launch(recipe: Recipe, resume: bool, reporter: Reporter, launch_args: list[str] | None) -> TrainResult:
    """Start this node's part of the run under torchrun (or print every node's command)."""
    topo, data = recipe.topology, recipe.data
    # Caught here once, before any process starts, rather than by every rank.
    check_pretrain_data(data.root, data.train, data.split, topo.world_size, data.num_workers)
    run_dir = Path(recipe.output.dir)
    if launch_args is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = run_dir / "launch-recipe.toml"
        resolved.write_text(recipe_to_toml(recipe), encoding="utf-8")
        launch_args = ["pretrain", str(resolved), *(["--resume"] if resume else []), "--plain"]
    plan = launch.plan_launch(topo)
    if plan.node_rank is None:
        commands = launch.per_node_commands(plan, launch_args)
        reporter.info(
            f"topology asks for {topo.nodes} nodes x {topo.devices_per_node} devices: start on each node "
            "(node 0 first; replace MASTER_HOST by node 0's address, or set NODE_RANK and MASTER_ADDR "
            "and run the same scl command on every node):"
        )
        for rank, command in enumerate(commands):
            reporter.info(f"node {rank}: {command}")
        return TrainResult(run_dir, 0)
    where = f"node {plan.node_rank} of {plan.nnodes}, " if plan.nnodes > 1 else ""
    reporter.info(
        f"launching torchrun: {where}{plan.nproc_per_node} process(es) per node ({topo.strategy}, "
        f"device {topo.device})"
    )
    launch.run_torchrun(launch.torchrun_command(plan, launch_args))
    return result_from_run(run_dir)


def result_from_run(run_dir: Path) -> TrainResult:
    """A TrainResult read back from a run directory (metrics.jsonl and checkpoints), for the
    process that launched the ranks."""
    history = []
    metrics_file = Path(run_dir) / METRICS_FILE
    if metrics_file.exists():
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                history.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    losses = [row["loss"] for row in history if row.get("loss") is not None]
    return TrainResult(
        run_dir=Path(run_dir),
        steps=int(history[-1]["step"]) if history else 0,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        last_checkpoint=latest_checkpoint(run_dir) if Path(run_dir).exists() else None,
        history=history,
    )
