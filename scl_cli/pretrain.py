"""Engine of `scl pretrain`: build everything a recipe names, then hand it to the Trainer."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from scl_cli import __version__
from scl_cli.data.loader import build_pretrain_loader
from scl_cli.data.tokenizer import TextTokenizer, load_tokenizer
from scl_cli.errors import UsageError
from scl_cli.model import SCLModel
from scl_cli.objectives import build_objectives
from scl_cli.recipe import Recipe, recipe_to_dict
from scl_cli.reporting import NullReporter, Reporter
from scl_cli.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    restore_rng_state,
)
from scl_cli.training.masking import TextSpec
from scl_cli.training.metrics import MetricsLogger
from scl_cli.training.optim import build_optimizer, build_scheduler
from scl_cli.training.pretrain_step import PretrainStep
from scl_cli.training.runtime import Runtime, seed_everything, setup_runtime
from scl_cli.training.trainer import Trainer, TrainResult, TrainState, write_checkpoint_fn


def text_spec(tokenizer: TextTokenizer, vocab_size: int) -> TextSpec:
    return TextSpec(
        vocab_size, tokenizer.pad_id, tokenizer.mask_id, tokenizer.special_ids, tokenizer.word_start
    )


def build_model(recipe: Recipe, tokenizer: TextTokenizer) -> SCLModel:
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
        for part in (model.vision, model.text, model.fusion):
            part.compile()
    return PretrainStep(model, build_objectives(recipe.objectives), recipe.masking, spec.to(runtime.device))


def build(recipe: Recipe) -> Built:
    """Runtime, tokenizer, model and step module for a recipe."""
    runtime = setup_runtime(recipe.topology)
    seed_everything(recipe.optim.seed)
    tokenizer = load_tokenizer(recipe.model.text.tokenizer, recipe.data.root, recipe.data.train[0])
    model = build_model(recipe, tokenizer)
    step = make_step_module(recipe, model, text_spec(tokenizer, model.vocab_size), runtime)
    return Built(runtime, tokenizer, model, step)


def pretrain(recipe: Recipe, resume: bool = False, reporter: Reporter | None = None) -> TrainResult:
    """Pre-train as the recipe says; with `resume`, continue from the newest complete checkpoint."""
    reporter = reporter or NullReporter()
    topo = recipe.topology
    if topo.world_size > 1 and "WORLD_SIZE" not in os.environ:
        raise UsageError(
            f"topology asks for {topo.nodes} node(s) x {topo.devices_per_node} devices; start it with "
            f"`torchrun --nnodes {topo.nodes} --nproc-per-node {topo.devices_per_node} -m scl_cli.cli pretrain ...` "
            "or use --set topology.devices_per_node=1 for one device"
        )
    run_dir = Path(recipe.output.dir)
    found = latest_checkpoint(run_dir) if run_dir.exists() else None
    if found is not None and not resume:
        raise UsageError(
            f"{run_dir} already holds checkpoints (newest {found.name}): pass --resume to continue it, "
            "or choose another output.dir"
        )
    b = build(recipe)
    rt, model = b.runtime, b.model
    optimizer = build_optimizer(model, recipe.optim, model.param_group, rt.device.type)
    scheduler = build_scheduler(optimizer, recipe.optim)
    state = TrainState()
    saved = None
    if resume and found is not None:
        ckpt = load_checkpoint(found)
        load_model_weights(model, ckpt.state_dict)
        if ckpt.training_state is None:
            raise UsageError(f"{found}: holds weights only (no training state), so it cannot be resumed")
        saved = ckpt.training_state
        reporter.info(f"resuming from {found} (step {ckpt.step})")
    elif resume:
        reporter.info(f"no checkpoint in {run_dir}: starting from step 0")

    step_module: torch.nn.Module = b.step_module
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(
            step_module,
            device_ids=[rt.local_rank] if rt.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    metrics = MetricsLogger(run_dir, tensorboard=recipe.log.tensorboard, enabled=rt.is_main)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_file = Path(tmp) / "tokenizer.json"
        b.tokenizer.save(tokenizer_file)
        trainer = Trainer(
            step_module, model, optimizer, scheduler, rt,
            max_steps=recipe.optim.max_steps,
            accumulation=recipe.accumulation_steps(),
            global_batch=recipe.optim.batch_size,
            grad_clip=recipe.optim.grad_clip,
            log_every=recipe.log.every,
            checkpoint_every=recipe.output.checkpoint_every,
            save_fn=write_checkpoint_fn(
                run_dir, model, checkpoint_config(recipe, model), {"tokenizer.json": tokenizer_file},
                recipe.output.keep_last, rt,
            ),
            metrics=metrics,
            reporter=reporter,
        )  # fmt: skip
        if saved is not None:
            state = trainer.load_training_state(saved)
            metrics.truncate_after(state.step)
        loader = build_pretrain_loader(
            data_root=recipe.data.root,
            datasets=recipe.data.train,
            weights=recipe.data.weights,
            split=recipe.data.split,
            tokenizer=b.tokenizer,
            image_size=recipe.model.vision.image_size,
            max_len=recipe.model.text.max_len,
            batch_size=recipe.micro_batch(),
            seed=recipe.optim.seed,
            rank=rt.rank,
            world_size=rt.world_size,
            num_workers=recipe.data.num_workers,
            shuffle_buffer=recipe.data.shuffle_buffer,
            augment=recipe.data.augment,
            crop_min_scale=recipe.data.crop_min_scale,
            start_batch=state.micro_batches,
        )
        batches = iter(loader)
        if saved is not None:
            # After the loader exists: starting its workers draws from the global RNG.
            restore_rng_state(saved["rng"])
        try:
            result = trainer.fit(batches, state, run_dir)
        finally:
            metrics.close()
    return result
