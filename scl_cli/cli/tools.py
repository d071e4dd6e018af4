"""`scl convert`, `scl recipe show|validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scl_cli.cli.app import RecipeArg, SetOpt, app, recipe_app


@app.command()
def convert(
    official: Annotated[
        Path,
        typer.Option(
            "--official",
            help="Checkpoint of the paper's published code (PyTorch Lightning .ckpt).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="Checkpoint directory to write (must not exist).", show_default=False),
    ],
    max_len: Annotated[
        int, typer.Option("--max-len", min=4, help="Tokens per caption the converted model is built for.")
    ] = 50,
    every_key: Annotated[
        bool, typer.Option("--every-key", help="List every key, not module groups.")
    ] = False,
) -> None:
    """Convert a published SCL checkpoint into an scl checkpoint (model.safetensors + config.json);
    every key is mapped or reported, and a key that cannot be placed is an error naming it."""
    from scl_cli.engines.convert import REPORT_FILE, convert_official
    from scl_cli.reporting import make_reporter

    report = convert_official(official, out, max_len=max_len)
    reporter = make_reporter()
    counts = ", ".join(f"{n} {what}" for what, n in report.counts().items())
    reporter.table(
        f"{official} -> {out} ({counts})", ["official", "scl", "tensors", "note"], report.rows(every_key)
    )
    for note in report.notes:
        reporter.info(note)
    reporter.info(f"wrote {out} (every key: {out / REPORT_FILE})")


@recipe_app.command("show")
def recipe_show(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Print the fully resolved recipe (every default filled in) as TOML."""
    from scl_cli.config import load_recipe, recipe_to_toml

    typer.echo(recipe_to_toml(load_recipe(recipe, set_ or [])), nl=False)


@recipe_app.command("validate")
def recipe_validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Check a recipe; exit code 2 and one line naming the field when it is wrong."""
    from scl_cli.config import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    enabled = ", ".join(f"{n}={s.weight:g}" for n, s in loaded.enabled_objectives().items())
    typer.echo(f"{recipe}: valid (objectives {enabled}; global batch {loaded.optim.batch_size})")
