"""Engine of `scl finetune`: a pre-trained (or published) checkpoint, a task head, the task's data.

The training loop, checkpoints and exact resume are pre-training's (`training.run`); what differs
is where the weights come from (`inference.loading`), the batches (`data.task_batches`) and the
objectives (`vqa`, `nlvr2`, `rank`, plus `itc` / `itm` for retrieval). At the end the model is
evaluated on the task's evaluation split with the official metric.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scl_cli.config import Recipe
from scl_cli.data.shard_cache import configure_remote
from scl_cli.data.task_batches import (
    CaptionBatcher,
    NLVR2Batcher,
    VQABatcher,
    count_split,
    vqa_answer_vocabulary,
)
from scl_cli.data.transforms import ImageTransform
from scl_cli.errors import UsageError
from scl_cli.evaluation.common import EvalReport
from scl_cli.evaluation.run import evaluate
from scl_cli.inference.loading import load_model
from scl_cli.model.task_heads import VQA_VOCABULARY_FILE
from scl_cli.objectives import build_objectives
from scl_cli.objectives.masking import TextSpec
from scl_cli.reporting import NullReporter, Reporter
from scl_cli.training import launch
from scl_cli.training.checkpointing import checkpoint_config, existing_checkpoint
from scl_cli.training.run import run_training
from scl_cli.training.runtime import seed_everything, setup_runtime
from scl_cli.training.step import TrainStep
from scl_cli.training.trainer import TrainResult

TASK_OBJECTIVES = {"vqa": {"vqa"}, "nlvr2": {"nlvr2"}, "retrieval": {"rank", "itc", "itm"}}


@dataclass
class FinetuneResult:
    train: TrainResult
    evaluation: EvalReport | None
    new_heads: list[str]


def _check_objectives(recipe: Recipe) -> None:
    task = recipe.task
    enabled = set(recipe.enabled_objectives())
    wrong = enabled - TASK_OBJECTIVES[task.name]
    if wrong:
        raise UsageError(
            f"task {task.name} trains {', '.join(sorted(TASK_OBJECTIVES[task.name]))}; the recipe also "
            f"enables {', '.join(sorted(wrong))} (set their weight to 0)"
        )


EVAL_FILE = "eval.json"


def finetune(
    recipe: Recipe,
    ckpt: Path,
    resume: bool = False,
    reporter: Reporter | None = None,
    evaluate_after: bool = True,
    launch_args: list[str] | None = None,
) -> FinetuneResult:
    """Fine-tune checkpoint `ckpt` (a checkpoint or run directory, or a published `.ckpt`) on the
    recipe's task; with `resume`, continue this run from its newest checkpoint instead. The
    evaluation at the end is written to OUTPUT/eval.json. A topology of several processes is
    launched through torchrun, as `scl pretrain` does (`launch_args`: each process's `scl`
    arguments; by default the resolved recipe is written to OUTPUT/launch-recipe.toml)."""
    reporter = reporter or NullReporter()
    task = recipe.task
    if task is None:
        raise UsageError("the recipe has no [task] table: it is a pre-training recipe (use scl pretrain)")
    _check_objectives(recipe)
    recipe = recipe.model_copy(deep=True)  # the caller's recipe stays as it was
    run_dir = Path(recipe.output.dir)
    found = existing_checkpoint(run_dir, resume)
    launch.adopt_slurm_tasks(recipe.topology)
    if launch.needs_launch(recipe.topology):
        extra = ["--ckpt", str(ckpt), *([] if evaluate_after else ["--no-eval"])]
        train = launch.launch_run(recipe, "finetune", resume, reporter, launch_args, [task.dataset],
                                  task.train_split, extra, task.group)  # fmt: skip
        report = EvalReport.read_json(run_dir / EVAL_FILE) if (run_dir / EVAL_FILE).is_file() else None
        return FinetuneResult(train, report, [])
    launch.check_world(recipe.topology, "finetune")
    runtime = setup_runtime(recipe.topology)
    seed_everything(recipe.optim.seed)
    configure_remote(recipe.data)
    root = recipe.data.root
    answers: list[str] = []
    if task.name == "vqa":
        answers = vqa_answer_vocabulary(root, task.dataset)
        vqa = recipe.objectives["vqa"]
        if vqa.answers == 0:
            vqa.answers = len(answers)
    if task.epochs is not None:
        samples = count_split(root, task.dataset, task.train_split, task.group)
        recipe.optim.max_steps = max(1, math.ceil(task.epochs * samples / recipe.optim.batch_size))
    objectives = build_objectives(recipe.objectives)

    loaded = load_model(ckpt, recipe.model, objectives, root)
    model = loaded.model
    for note in loaded.notes:
        reporter.info(note)
    if loaded.new_keys:
        heads = sorted({k.split(".")[0] for k in loaded.new_keys})
        reporter.info(f"new heads (not in {ckpt}): {', '.join(heads)}")
    if loaded.unused_keys:
        reporter.info(
            f"checkpoint heads not used by this task: {', '.join(sorted({k.split('.')[0] for k in loaded.unused_keys}))}"
        )
    step = TrainStep(model.to(runtime.device), objectives, recipe.masking,
                        TextSpec.from_tokenizer(loaded.tokenizer, model.vocab_size).to(runtime.device))  # fmt: skip

    size, max_len = model.config.vision.image_size, model.config.text.max_len
    transform = ImageTransform(size, recipe.data.augment, recipe.data.crop_min_scale)
    if task.name == "vqa":
        collate = VQABatcher(loaded.tokenizer, transform, max_len, answers, task.max_questions)
    elif task.name == "nlvr2":
        collate = NLVR2Batcher(loaded.tokenizer, transform, max_len)
    else:
        collate = CaptionBatcher(loaded.tokenizer, transform, max_len, recipe.data.num_frames)

    config = checkpoint_config(recipe, model, VQA_VOCABULARY_FILE if answers else None)
    config["model"] = model.config.model_dump(mode="json")
    config["task"] = task.model_dump(mode="json")
    config["finetuned_from"] = str(loaded.config.get("checkpoint", ckpt))
    with tempfile.TemporaryDirectory() as tmp:
        extra = {"tokenizer.json": Path(tmp) / "tokenizer.json"}
        loaded.tokenizer.save(extra["tokenizer.json"])
        if answers:
            extra[VQA_VOCABULARY_FILE] = Path(tmp) / VQA_VOCABULARY_FILE
            extra[VQA_VOCABULARY_FILE].write_text(json.dumps(answers), encoding="utf-8")
        result = run_training(
            recipe, model, loaded.tokenizer, step, runtime, run_dir,
            resume_from=found,
            datasets=[task.dataset], split=task.train_split, group=task.group,
            collate=collate, config=config,
            extra_files=extra, reporter=reporter,
        )  # fmt: skip
    report = None
    # A run stopped by SIGTERM is evaluated when it ends after --resume, not now.
    if (
        evaluate_after
        and runtime.is_main
        and result.last_checkpoint is not None
        and not result.stopped_by_signal
    ):
        report = evaluate(task.name, result.last_checkpoint, split=task.eval_split,
                          rerank=task.rerank if task.name == "retrieval" else None)  # fmt: skip
        report.write_json(run_dir / EVAL_FILE)
    runtime.teardown()
    return FinetuneResult(result, report, loaded.new_keys)
