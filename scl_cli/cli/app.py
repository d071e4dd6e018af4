"""The `scl` Typer application and the options several commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scl_cli import __version__

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
