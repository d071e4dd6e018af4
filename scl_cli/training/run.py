"""One training run, shared by `scl pretrain` and `scl finetune`: data parallelism, optimiser,
metrics, checkpoints and exact resume around the Trainer."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scl_cli.config import Recipe
from scl_cli.data.manifests import parse_source, source_media
from scl_cli.data.shard_cache import configure_remote
from scl_cli.data.skips import SkipCounter
from scl_cli.data.stream import build_train_loader
from scl_cli.data.tokenizer import TextTokenizer
from scl_cli.distributed import is_communication_error
from scl_cli.errors import TrainingError, UsageError
from scl_cli.io.checkpoints import latest_checkpoint, load_checkpoint, load_model_weights
from scl_cli.reporting import NullReporter, Reporter
from scl_cli.training.auto_batch import cuda_probe, resolve_micro_batch
from scl_cli.training.checkpointing import reproduction_record, write_checkpoint_fn
from scl_cli.training.evaluator import InTrainingEval
from scl_cli.training.freeze import freeze_unreachable
from scl_cli.training.guard import NonFiniteGuard
from scl_cli.training.loggers import METRICS_FILE, MetricsLogger
from scl_cli.training.optim import build_optimizer, build_scheduler
from scl_cli.training.parallel import StateIO, wrap_data_parallel
from scl_cli.training.preemption import StopRequest
from scl_cli.training.runtime import Runtime
from scl_cli.training.step import TrainStep
from scl_cli.training.trainer import Trainer, TrainResult, TrainState


def run_training(
    recipe: Recipe,
    model: Any,
    tokenizer: TextTokenizer,
    step_module: TrainStep,
    runtime: Runtime,
    run_dir: Path,
    *,
    resume_from: Path | None,
    datasets: list[str],
    split: str,
    config: dict[str, Any],
    group: str = "splits",
    collate: Callable | None = None,
    frozen: list[str] | None = None,
    extra_files: dict[str, Path] | None = None,
    reporter: Reporter | None = None,
    stop_at: int | None = None,
) -> TrainResult:
    """Train `step_module` on `datasets`/`split` until `recipe.optim.max_steps`.

    `resume_from`: a checkpoint of this run to continue exactly (weights, optimiser, scheduler,
    RNG, data position). `frozen`: parameter names not to train; by default those the step's
    objectives can never reach (so DDP needs no unused-parameter search). `collate` turns raw
    samples into the batch the objectives read (default: image + one caption). `stop_at`: end
    after this step (the schedule still runs to `max_steps`; `--reproduce`). Every checkpoint's
    config.json records where the run came from (`checkpointing.reproduction_record`).
    """
    reporter = reporter or NullReporter()
    if not runtime.is_main:
        reporter = NullReporter()  # rank 0 reports for everyone
    state_io: StateIO | None = None

    def reload(path: Path) -> dict:
        """Weights of checkpoint `path` into the model (every rank); returns its training state."""
        ckpt = load_checkpoint(path)
        if ckpt.training_state is None:
            raise UsageError(f"{path}: holds weights only (no training state), so it cannot be resumed")
        if state_io is None:
            load_model_weights(model, ckpt.state_dict)
        else:
            state_io.load_model_state(model, ckpt.state_dict)
        return ckpt.training_state

    saved = None
    if resume_from is not None:
        saved = reload(resume_from)
        reporter.info(f"resuming from {resume_from} (step {saved['step']})")
    if runtime.distributed:
        _check_same_start(int(saved["step"]) if saved else 0, runtime, run_dir)

    reading = configure_remote(recipe.data)
    media = source_media(recipe.data.root, datasets, split, group)
    frames = recipe.data.num_frames if "video" in media else 1
    if frames > model.config.vision.max_frames:
        raise UsageError(
            f"data.num_frames {frames} exceeds model.vision.max_frames {model.config.vision.max_frames} "
            "(the temporal embedding's size) — lower one or raise the other"
        )
    step_module.mixed_media = model.vision.images_share_steps_with_clips = len(media) > 1
    if frozen is None:
        # What the step never reaches (e.g. the temporal embedding for still images) is frozen, so
        # that DDP needs no unused-parameter search (see training.parallel).
        frozen = freeze_unreachable(model, step_module.objectives, recipe.masking, step_module.spec, frames)
    else:
        for name in frozen:
            model.get_parameter(name).requires_grad_(False)
    if frozen:
        reporter.info(f"not trained by this recipe's objectives (frozen): {', '.join(frozen)}")
    if recipe.optim.micro_batch_size == "auto":
        probe = (
            cuda_probe(step_module, model, recipe, runtime, frames) if runtime.device.type == "cuda" else None
        )
        resolve_micro_batch(recipe, runtime, run_dir, probe, frames, reporter)
    config = {**config, "reproduction": reproduction_record(recipe, runtime, datasets, group)}
    wrapped, state_io = wrap_data_parallel(step_module, model, recipe.topology, runtime)
    optim = recipe.optim
    optimizer = build_optimizer(model, recipe.optim, model.param_group, runtime.device.type)
    scheduler = build_scheduler(optimizer, recipe.optim)
    state = TrainState()
    metrics = MetricsLogger(run_dir, loggers=recipe.log.loggers, enabled=runtime.is_main)
    loaders: list = []

    def rebatch(at: TrainState, from_state: dict | None = None) -> SkipCounter:
        """The data stream from micro-batch `at.micro_batches` of a training state on (the masks'
        random stream too), with the skipped samples before it accounted for."""
        for old in loaders:  # a roll-back replaces the stream: stop the old loader's workers
            old.close()
        loaders.clear()
        step_module.draws = at.micro_batches
        skips = _skip_state(from_state, runtime.rank, recipe.data.num_workers, len(datasets))
        loader = build_train_loader(
            data_root=recipe.data.root,
            datasets=datasets,
            weights=recipe.data.weights if len(datasets) > 1 else None,
            split=split,
            tokenizer=tokenizer,
            image_size=model.config.vision.image_size,
            max_len=model.config.text.max_len,
            batch_size=recipe.micro_batch(),
            seed=recipe.optim.seed,
            rank=runtime.rank,
            world_size=runtime.world_size,
            num_workers=recipe.data.num_workers,
            shuffle_buffer=recipe.data.shuffle_buffer,
            augment=recipe.data.augment,
            crop_min_scale=recipe.data.crop_min_scale,
            start_batch=at.micro_batches,
            pin_memory=runtime.device.type == "cuda",
            collate=collate,
            group=group,
            num_frames=recipe.data.num_frames,
            start_skipped=(skips or {}).get("extra"),
            reading=reading,
            pad_to_multiple=recipe.data.pad_to_multiple,
        )
        loaders.append(SkipCounter(iter(loader), recipe.data.num_workers, datasets, recipe.micro_batch(),
                                   at.micro_batches, skips))  # fmt: skip
        return loaders[-1]

    with tempfile.TemporaryDirectory() as tmp:
        files = dict(extra_files or {})
        if "tokenizer.json" not in files:
            files["tokenizer.json"] = Path(tmp) / "tokenizer.json"
            tokenizer.save(files["tokenizer.json"])
        trainer = Trainer(
            wrapped, model, optimizer, scheduler, runtime,
            max_steps=recipe.optim.max_steps,
            accumulation=recipe.accumulation_steps(),
            grad_clip=recipe.optim.grad_clip,
            log_every=recipe.log.every,
            checkpoint_every=recipe.output.checkpoint_every,
            save_fn=write_checkpoint_fn(run_dir, model, config, files, recipe.output.keep_last, runtime, state_io),
            metrics=metrics,
            reporter=reporter,
            state_io=state_io,
            guard=NonFiniteGuard(optim.rollback_after, optim.rollback_lr_factor, optim.max_rollbacks,
                                 runtime.distributed),
            reload=reload,
            rebatch=rebatch,
            max_bad_samples=recipe.data.max_bad_samples,
            stop_at=stop_at,
            evaluator=_evaluator(recipe, model, tokenizer, runtime, run_dir, datasets, split, group, config, files,
                                 metrics, reporter, resuming=saved is not None),
            clip_only_logs=step_module.clip_only_logs,
        )  # fmt: skip
        if saved is not None:
            state = trainer.load_training_state(saved)
            metrics.truncate_after(state.step)
        # Before the loader starts its workers: they inherit the SIGTERM handler (and so live on
        # until the checkpoint is written).
        trainer.stop = StopRequest(runtime.rank, runtime.distributed).install()
        try:
            batches = rebatch(state, saved)
            if saved is not None:
                # After the loader exists: starting its workers draws from the global RNG.
                trainer.restore_rng(saved)
            return trainer.fit(batches, state, run_dir)
        except RuntimeError as err:
            if runtime.distributed and is_communication_error(err):
                raise _lost_contact(err, runtime, run_dir) from None
            raise
        finally:
            trainer.stop.uninstall()
            metrics.close()
            for counter in loaders:
                counter.close()


def _evaluator(
    recipe: Recipe, model: Any, tokenizer: TextTokenizer, runtime: Runtime, run_dir: Path, datasets: list[str],
    split: str, group: str, config: dict, files: dict, metrics: MetricsLogger, reporter: Reporter, resuming: bool,
) -> InTrainingEval | None:  # fmt: skip
    """The recipe's evaluation during training (`[eval]`), on the held-out split of its data set."""
    cfg = recipe.eval
    if cfg.every == 0:
        return None
    dataset = cfg.data or datasets[0]
    if ":" not in dataset and group != "splits":
        dataset = f"{dataset}:{group}"
    name, eval_group = parse_source(dataset)
    frames = (
        recipe.data.num_frames
        if "video" in source_media(recipe.data.root, [name], cfg.split, eval_group)
        else 1
    )
    return InTrainingEval(cfg, model, tokenizer, runtime, run_dir, recipe.data.root, dataset, frames, config, files,
                          metrics, reporter, resuming)  # fmt: skip


def _check_same_start(step: int, runtime: Runtime, run_dir: Path) -> None:
    """Every rank must start from the same step: a rank that found no checkpoint to resume (an
    output.dir that is not one shared folder on every node) would train on from another state."""
    import torch
    import torch.distributed as dist

    steps = torch.tensor([step, -step], dtype=torch.int64, device=runtime.device)
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    high, low = int(steps[0]), -int(steps[1])
    if high != low:
        raise TrainingError(
            f"rank {runtime.rank}: the ranks start from different steps ({low} and {high}): output.dir ({run_dir}) "
            "must be one folder that every node sees (a shared file system) for --resume"
        )


def _lost_contact(err: RuntimeError, runtime: Runtime, run_dir: Path) -> TrainingError:
    first = re.sub(r"^\[[^\]]*\] ", "", " ".join(str(err).split())).split(". ")[0][:200]  # gloo's file:line
    newest = latest_checkpoint(run_dir) if Path(run_dir).exists() else None
    if newest is not None:
        resume = f"the newest checkpoint is {newest.name}"
    else:
        resume = (
            "rank 0 writes the checkpoints (output.dir on node 0)"
            if runtime.rank
            else "no checkpoint was written yet"
        )
    return TrainingError(
        f"rank {runtime.rank} of {runtime.world_size}: lost contact with the other processes of the run — a node "
        f"or process stopped, or the network failed ({first}); {resume}: start every node again with --resume"
    )


def _skip_state(saved: dict | None, rank: int, workers: int, sources: int) -> dict | None:
    """This rank's skipped-sample state of a training state, when it fits this loader (same
    workers and data sets; otherwise the stream restarts its accounting, as after a topology change)."""
    if saved is None:
        return None
    ranks = saved.get("data_skips_ranks") or []
    state = ranks[rank] if rank < len(ranks) else saved.get("data_skips")
    extra = (state or {}).get("extra") or []
    if len(extra) != max(workers, 1) or any(len(row) != sources for row in extra):
        return None
    return state


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
