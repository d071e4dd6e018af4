"""`scl serve`, `scl push`: a trained model behind HTTP, or on the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scl_cli.cli.app import PlainOpt, app

CkptOpt = Annotated[
    str,
    typer.Option(
        "--ckpt",
        help="Run dir (newest checkpoint), checkpoint or save_pretrained folder, published .ckpt, or Hub id user/repo.",
        show_default=False,
    ),
]


@app.command()
def serve(
    ckpt: CkptOpt,
    index: Annotated[
        Path | None, typer.Option("--index", help="Index for /search (default: the newest made from --ckpt).")
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = 8000,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")] = "auto",
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="float32 (default) | bfloat16 | float16.")
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.01, help="Largest request body accepted (413 above).")
    ] = 16.0,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Concurrent requests of a kind run in one model call.")
    ] = 32,
    plain: PlainOpt = False,
) -> None:
    """Serve a model over HTTP: /embed/text, /embed/image, /search (text or image over the index,
    optional re-rank), /vqa, /health, and a page at / to try queries. Concurrent requests are
    batched; bad input gets a 4xx JSON error."""
    from scl_cli.engines.serve import serve as serve_engine
    from scl_cli.reporting import make_reporter
    from scl_cli.serving.batching import ServeLimits

    limits = ServeLimits(max_upload_bytes=int(max_upload_mb * 2**20), max_batch=max_batch)
    serve_engine(ckpt, index, host, port, device, dtype, limits, reporter=make_reporter(force_plain=plain))


@app.command()
def push(
    run: Annotated[
        str, typer.Argument(help="Run dir (newest checkpoint), checkpoint folder or published .ckpt.")
    ],
    repo_id: Annotated[str, typer.Argument(help="Hub model repo, user/repo (created when missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    message: Annotated[str | None, typer.Option("--message", help="Commit message.")] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch to push to (created when missing).")
    ] = None,
    create_pr: Annotated[
        bool, typer.Option("--create-pr", help="Open a pull request instead of committing.")
    ] = False,
    eval_file: Annotated[
        list[Path] | None,
        typer.Option("--eval", help="An `scl eval` report for the model card (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the folder here instead of uploading (to check it first)."),
    ] = None,
    plain: PlainOpt = False,
) -> None:
    """Share a model on the Hugging Face Hub: weights (safetensors), config.json (architecture and
    heads), tokenizer, answer list and a model card (architecture, recipe, data manifests, metrics
    of the eval*.json reports of the run). Log in first (`hf auth login`, or HF_TOKEN)."""
    from scl_cli.engines.push import push as push_engine
    from scl_cli.reporting import make_reporter

    reporter = make_reporter(force_plain=plain)
    result = push_engine(
        Path(run), repo_id, private or None, message, revision, create_pr, eval_file, out, reporter
    )
    heads = ", ".join(result.heads) or "none"
    if result.folder is not None:
        reporter.info(f"wrote {result.folder} ({', '.join(result.files)}; heads: {heads}; "
                      f"{result.reports} evaluation reports in the card) — not uploaded")  # fmt: skip
    else:
        reporter.info(f"pushed to https://huggingface.co/{repo_id} (heads: {heads}; {result.reports} evaluation "
                      f"reports in the card): {result.url}")  # fmt: skip
        reporter.info(f'load it with: import scl_cli as scl; scl.load("{repo_id}")')
