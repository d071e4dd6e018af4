"""`scl pretrain`, `scl finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scl_cli.cli.app import PlainOpt, RecipeArg, SetOpt, app


@app.command()
def pretrain(
    recipe: RecipeArg,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest complete checkpoint.")
    ] = False,
    plain: PlainOpt = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print parameters, FLOPs, memory per device and a time/cost projection; "
            "start and write nothing.",
        ),
    ] = False,
    measure: Annotated[
        bool, typer.Option("--measure", help="With --dry-run: time a few real steps on this device.")
    ] = False,
    samples_per_s: Annotated[
        float | None,
        typer.Option(
            "--samples-per-s",
            min=0.001,
            help="With --dry-run: throughput per device to project with (e.g. from scl bench pretrain).",
        ),
    ] = None,
    gpu_hour_price: Annotated[
        float | None,
        typer.Option(
            "--gpu-hour-price", min=0.0, help="With --dry-run: price of one GPU-hour, for the cost."
        ),
    ] = None,
    reproduce: Annotated[
        Path | None,
        typer.Option(
            "--reproduce",
            help="Re-run the first steps of this earlier run (its folder) and compare "
            "the losses: bit-exact on the same machine, within --tolerance otherwise.",
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=1, help="With --reproduce: steps to re-run (default: up to 20)."),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance", min=0.0, help="With --reproduce elsewhere: relative loss difference allowed."
        ),
    ] = 1e-3,
) -> None:
    """Pre-train an SCL model as the recipe says (metrics in OUTPUT/metrics.jsonl, checkpoints in
    OUTPUT/checkpoints/step-N/). A topology of several devices or nodes starts itself through
    torchrun (or prints each node's command; see README, Distributed training)."""
    from scl_cli.config import load_recipe
    from scl_cli.errors import ReproductionError, UsageError
    from scl_cli.reporting import make_reporter

    loaded = load_recipe(recipe, set_ or [])
    if not dry_run and (measure or samples_per_s is not None or gpu_hour_price is not None):
        raise UsageError("--measure, --samples-per-s and --gpu-hour-price go with --dry-run")
    if reproduce is None and steps is not None:
        raise UsageError("--steps goes with --reproduce RUN")
    if reproduce is not None and (dry_run or resume):
        raise UsageError("--reproduce re-runs steps in a temporary folder: without --dry-run or --resume")
    if reproduce is not None:
        from scl_cli.engines.pretrain import reproduce as reproduce_engine
        from scl_cli.training.launch import is_main_process

        reporter = make_reporter(force_plain=plain, quiet=not is_main_process())
        report = reproduce_engine(loaded, reproduce, steps=steps, tolerance=tolerance, reporter=reporter)
        if not is_main_process():
            return
        reporter.table(f"scl pretrain {recipe} --reproduce {reproduce}",
                       ["step", "value", "recorded", "now", "difference", ""], report.rows)  # fmt: skip
        for note in report.notes:
            reporter.info(f"note: {note}")
        how = "bit-exact" if report.exact else f"within {report.tolerance:g} (relative)"
        if not report.matches:
            raise ReproductionError(f"not reproduced ({how}): {'; '.join(report.mismatches[:3])}")
        reporter.info(f"reproduced: the losses of steps 1-{report.steps} match {how}")
        return
    if dry_run:
        from scl_cli.engines.dry_run import dry_run as dry_run_engine

        reporter = make_reporter(force_plain=plain)
        report = dry_run_engine(loaded, measure=measure, samples_per_s=samples_per_s,
                                gpu_hour_price=gpu_hour_price, reporter=reporter)  # fmt: skip
        reporter.table(f"scl pretrain {recipe} --dry-run", ["", "value"], report.rows())
        for note in report.notes:
            reporter.info(f"note: {note}")
        return

    from scl_cli.engines.pretrain import pretrain as pretrain_engine
    from scl_cli.training.launch import is_main_process, launched_by_scl

    reporter = make_reporter(force_plain=plain, quiet=not is_main_process())
    # What every torchrun process is started with, if the topology needs a launch.
    launch_args = ["pretrain", str(recipe), *(f"--set={s}" for s in set_ or [])]
    launch_args += ["--resume"] * resume + ["--plain"] * plain
    result = pretrain_engine(loaded, resume=resume, reporter=reporter, launch_args=launch_args)
    # One summary: from the launcher, or from rank 0 of a run started by torchrun/srun directly.
    if not is_main_process() or launched_by_scl():
        return
    if result.stopped_by_signal:
        reporter.info(f"stopped by SIGTERM: checkpoint {result.last_checkpoint}; continue with the same command "
                      "and --resume")  # fmt: skip
    elif result.first_loss is not None:
        reporter.info(
            f"finished step {result.steps}: loss {result.first_loss:.4f} -> {result.last_loss:.4f}; "
            f"checkpoint {result.last_checkpoint}"
        )


@app.command()
def finetune(
    recipe: RecipeArg,
    ckpt: Annotated[
        Path,
        typer.Option(
            "--ckpt", help="Checkpoint dir, run dir (newest checkpoint) or a published SCL .ckpt file."
        ),
    ],
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue this run from its newest checkpoint.")
    ] = False,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the evaluation at the end.")] = False,
    plain: PlainOpt = False,
) -> None:
    """Fine-tune a checkpoint on the recipe's \\[task] (VQA, NLVR2, retrieval), then evaluate it
    (OUTPUT/eval.json). A topology of several devices or nodes starts itself through torchrun."""
    from scl_cli.config import load_recipe
    from scl_cli.engines.finetune import finetune as finetune_engine
    from scl_cli.reporting import make_reporter
    from scl_cli.training.launch import is_main_process, launched_by_scl

    loaded = load_recipe(recipe, set_ or [])
    reporter = make_reporter(force_plain=plain, quiet=not is_main_process())
    launch_args = ["finetune", str(recipe), "--ckpt", str(ckpt), *(f"--set={s}" for s in set_ or [])]
    launch_args += ["--resume"] * resume + ["--no-eval"] * no_eval + ["--plain"] * plain
    result = finetune_engine(loaded, ckpt, resume=resume, reporter=reporter, evaluate_after=not no_eval,
                             launch_args=launch_args)  # fmt: skip
    if not is_main_process() or launched_by_scl():
        return  # the launcher (or rank 0 of a run started by torchrun directly) sums the run up
    train = result.train
    if train.stopped_by_signal:
        reporter.info(f"stopped by SIGTERM: checkpoint {train.last_checkpoint}; continue with the same command "
                      "and --resume (it evaluates at the end)")  # fmt: skip
    elif train.first_loss is not None:
        reporter.info(f"finished step {train.steps}: loss {train.first_loss:.4f} -> {train.last_loss:.4f}; "
                      f"checkpoint {train.last_checkpoint}")  # fmt: skip
    if result.evaluation is not None:
        report = result.evaluation
        reporter.table(f"{report.task} on {report.dataset}/{report.split} ({report.samples} samples)",
                       ["metric", "value", "baseline"], report.rows())  # fmt: skip
