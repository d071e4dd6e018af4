"""The `scl` command line: Typer commands only, one module per group of commands; each command
validates its input, calls one engine (`scl_cli.engines`) and prints what it returned."""

from __future__ import annotations

import sys

from scl_cli.cli import bench, data, doctor, evaluate, figures, plots, search, share, tools, train  # noqa: F401  (registers the commands)
from scl_cli.cli.app import app
from scl_cli.errors import SclError

# `scl --help` lists the commands in the order of the pipeline, not of the modules' imports.
PIPELINE = ("prepare", "pretrain", "finetune", "eval", "index", "retrieve", "serve", "push", "plot",
            "visualize", "align", "convert", "doctor")  # fmt: skip
app.registered_commands.sort(
    key=lambda c: (
        PIPELINE.index(c.name or c.callback.__name__) if (c.name or c.callback.__name__) in PIPELINE else 99
    )
)


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


__all__ = ["app", "main"]
