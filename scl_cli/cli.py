"""The `scl` command line: Typer commands only; each calls one engine module."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from scl_cli import __version__
from scl_cli.errors import SclError

app = typer.Typer(
    name="scl",
    help="Vision-language pre-training with Semantic Completion Learning (SCL, CVPR 2023).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipe_app = typer.Typer(help="Inspect and check recipes.", no_args_is_help=True)
bench_app = typer.Typer(help="Measure throughput, memory and FLOPs.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
app.add_typer(bench_app, name="bench")

RecipeArg = Annotated[
    Path, typer.Argument(help="Recipe TOML file, e.g. recipes/tiny.toml.", show_default=False)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a recipe field, e.g. --set optim.max_steps=100 (repeatable; values are TOML literals).",
    ),
]
PlainOpt = Annotated[bool, typer.Option("--plain", help="Plain log lines instead of progress bars.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"scl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Prepare data, pre-train and inspect SCL models. Run `scl COMMAND --help` for each command."""


@app.command()
def prepare(
    name: Annotated[str, typer.Argument(help="Data set to prepare: 'shapes' (synthetic, offline).")],
    out: Annotated[
        Path, typer.Option("--out", help="Root folder; the data set is written to OUT/NAME/.")
    ] = Path("data"),
    images: Annotated[
        int, typer.Option("--images", min=10, help="shapes: number of images in all splits.")
    ] = 10000,
    seed: Annotated[int, typer.Option("--seed", help="shapes: generator seed (same seed, same bytes).")] = 0,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker processes (default: all cores).")
    ] = None,
    plain: PlainOpt = False,
) -> None:
    """Turn a data set into WebDataset shards + manifest.json (+ tokenizer for shapes)."""
    from scl_cli.prepare import prepare as prepare_engine
    from scl_cli.reporting import StageProgress, make_reporter

    reporter = make_reporter(force_plain=plain)
    with StageProgress(reporter) as progress:
        summary = prepare_engine(name, out, images=images, seed=seed, workers=workers, progress=progress)
    rows = [["images", split, n] for split, n in summary.splits.items()]
    rows += [[group, split, n] for group, counts in summary.tasks.items() for split, n in counts.items()]
    reporter.table(f"{name} -> {summary.path} ({summary.seconds:.1f} s)", ["part", "split", "samples"], rows)


@app.command()
def pretrain(
    recipe: RecipeArg,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest complete checkpoint.")
    ] = False,
    plain: PlainOpt = False,
) -> None:
    """Pre-train an SCL model as the recipe says (metrics in OUTPUT/metrics.jsonl, checkpoints in
    OUTPUT/checkpoints/step-N/)."""
    from scl_cli.pretrain import pretrain as pretrain_engine
    from scl_cli.recipe import load_recipe
    from scl_cli.reporting import make_reporter

    loaded = load_recipe(recipe, set_ or [])
    reporter = make_reporter(force_plain=plain)
    result = pretrain_engine(loaded, resume=resume, reporter=reporter)
    if result.first_loss is not None:
        reporter.info(
            f"finished step {result.steps}: loss {result.first_loss:.4f} -> {result.last_loss:.4f}; "
            f"checkpoint {result.last_checkpoint}"
        )


@recipe_app.command("show")
def recipe_show(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Print the fully resolved recipe (every default filled in) as TOML."""
    from scl_cli.recipe import load_recipe, recipe_to_toml

    typer.echo(recipe_to_toml(load_recipe(recipe, set_ or [])), nl=False)


@recipe_app.command("validate")
def recipe_validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Check a recipe; exit code 2 and one line naming the field when it is wrong."""
    from scl_cli.recipe import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    enabled = ", ".join(f"{n}={s.weight:g}" for n, s in loaded.enabled_objectives().items())
    typer.echo(f"{recipe}: valid (objectives {enabled}; global batch {loaded.optim.batch_size})")


@bench_app.command("pretrain")
def bench_pretrain(
    recipe: RecipeArg,
    set_: SetOpt = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed steps.")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed steps first.")] = 2,
    batch: Annotated[
        int | None, typer.Option("--batch", min=2, help="Per-device batch (default: the recipe's).")
    ] = None,
    peak_tflops: Annotated[
        float | None, typer.Option("--peak-tflops", help="Device peak for MFU (default: known-device table).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
) -> None:
    """Samples/s, step time, peak memory, FLOPs per sample and MFU of the recipe's pre-training step
    on synthetic batches (no data loading)."""
    from scl_cli.bench import bench_pretrain as bench_engine
    from scl_cli.recipe import load_recipe
    from scl_cli.reporting import make_reporter

    loaded = load_recipe(recipe, set_ or [])
    report = bench_engine(loaded, steps=steps, warmup=warmup, batch=batch, peak_tflops=peak_tflops)
    make_reporter().table(f"scl bench pretrain {recipe}", ["metric", "value"], report.rows())
    if json_out is not None:
        report.write_json(json_out)


def main() -> None:
    """Console entry point: user errors become one line and an exit code, never a traceback."""
    try:
        app()
    except SclError as err:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(err))}")
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
