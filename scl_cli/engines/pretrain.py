"""Engine of `scl pretrain`: build everything a recipe names, then hand it to the training run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scl_cli.config import Recipe
from scl_cli.data.tokenizer import TextTokenizer, load_tokenizer
from scl_cli.errors import UsageError
from scl_cli.model import SCLModel
from scl_cli.objectives.masking import TextSpec
from scl_cli.reporting import NullReporter, Reporter
from scl_cli.training import launch
from scl_cli.training.checkpointing import checkpoint_config, existing_checkpoint
from scl_cli.training.run import run_training
from scl_cli.training.runtime import Runtime, seed_everything, setup_runtime
from scl_cli.training.step import TrainStep, build_train_step
from scl_cli.training.trainer import TrainResult


def build_model(recipe: Recipe, tokenizer: TextTokenizer) -> SCLModel:
    vocab = recipe.model.text.vocab_size or tokenizer.vocab_size
    if vocab < tokenizer.vocab_size:
        raise UsageError(
            f"model.text.vocab_size {vocab} is smaller than the tokenizer's vocabulary ({tokenizer.vocab_size})"
        )
    return SCLModel.from_recipe_model(recipe.model, vocab, tokenizer.pad_id)


@dataclass
class Built:
    runtime: Runtime
    tokenizer: TextTokenizer
    model: SCLModel
    step_module: TrainStep


def build(recipe: Recipe) -> Built:
    """Runtime, tokenizer, model and step module for a recipe."""
    runtime = setup_runtime(recipe.topology)
    seed_everything(recipe.optim.seed)
    tokenizer = load_tokenizer(recipe.model.text.tokenizer, recipe.data.root, recipe.data.train[0])
    model = build_model(recipe, tokenizer)
    step = build_train_step(recipe, model, TextSpec.from_tokenizer(tokenizer, model.vocab_size), runtime)
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
    found = existing_checkpoint(run_dir, resume)
    launch.adopt_slurm_tasks(recipe.topology)
    if launch.needs_launch(recipe.topology):
        return launch.launch_run(recipe, "pretrain", resume, reporter, launch_args)
    launch.check_world(recipe.topology, "pretrain")

    b = build(recipe)
    if resume and found is None:
        reporter.info(f"no checkpoint in {run_dir}: starting from step 0")
    result = run_training(
        recipe, b.model, b.tokenizer, b.step_module, b.runtime, run_dir,
        resume_from=found,
        datasets=recipe.data.train, split=recipe.data.split,
        config=checkpoint_config(recipe, b.model), reporter=reporter,
    )  # fmt: skip
    b.runtime.teardown()
    return result
