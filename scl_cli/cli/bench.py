"""`scl bench pretrain|retrieve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scl_cli.cli.app import RecipeArg, SetOpt, bench_app


@bench_app.command("pretrain")
def bench_pretrain(
    recipe: RecipeArg,
    set_: SetOpt = None,
    steps: Annotated[int, typer.Option("--steps", min=0, help="Timed steps (0: count FLOPs only).")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed steps first.")] = 2,
    batch: Annotated[
        int | None, typer.Option("--batch", min=2, help="Per-device batch (default: the recipe's).")
    ] = None,
    peak_tflops: Annotated[
        float | None, typer.Option("--peak-tflops", help="Device peak for MFU (default: known-device table).")
    ] = None,
    data: Annotated[
        bool,
        typer.Option(
            "--data", help="Batches from the recipe's loader; report the time spent waiting for them."
        ),
    ] = False,
    compile_: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile", help="torch.compile each transformer layer (default: topology.compile)."
        ),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option("--profile", help="Write a torch.profiler trace and op table of the timed steps here."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
) -> None:
    """Samples/s, step time, peak memory, FLOPs per sample, MFU and (with --data) the share of time
    waiting for data of the recipe's pre-training step (forward, backward, AdamW)."""
    from scl_cli.config import load_recipe
    from scl_cli.engines.bench_pretrain import bench_pretrain as bench_engine
    from scl_cli.reporting import make_reporter

    loaded = load_recipe(recipe, set_ or [])
    report = bench_engine(
        loaded, steps=steps, warmup=warmup, batch=batch, peak_tflops=peak_tflops, data=data,
        compile=compile_, profile=profile,
    )  # fmt: skip
    make_reporter().table(f"scl bench pretrain {recipe}", ["metric", "value"], report.rows())
    if json_out is not None:
        report.write_json(json_out)


@bench_app.command("retrieve")
def bench_retrieve(
    sizes: Annotated[
        str, typer.Option("--sizes", help="Collection sizes, comma-separated.")
    ] = "10000,100000,1000000",
    dim: Annotated[
        int, typer.Option("--dim", min=2, help="Vector size (512: paper ITC; the tiny model has 64).")
    ] = 512,
    kinds: Annotated[
        str, typer.Option("--kinds", help="Index kinds to compare: flat, ivf, hnsw.")
    ] = "flat,ivf,hnsw",
    queries: Annotated[int, typer.Option("--queries", min=10, help="Timed queries per index.")] = 200,
    distribution: Annotated[
        str,
        typer.Option("--distribution", help="powerlaw (embedding-like, default) or uniform (worst case)."),
    ] = "powerlaw",
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="Checkpoint for the re-rank latency.")] = None,
    recipe: Annotated[
        Path | None,
        typer.Option("--recipe", help="Else a random model of this recipe's size (e.g. recipes/base.toml)."),
    ] = None,
    candidates: Annotated[
        int, typer.Option("--candidates", min=1, help="Re-ranked candidates per timing.")
    ] = 16,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON.")] = None,
) -> None:
    """Index build time, stage-1 query latency (p50/p99) and recall@10 of approximate indexes against
    exact search on synthetic vectors, and the re-rank cost per candidate."""
    from scl_cli.engines.bench_retrieve import bench_indexes, bench_rerank
    from scl_cli.errors import UsageError
    from scl_cli.reporting import make_reporter

    reporter = make_reporter()
    try:
        size_list = [int(s.replace("_", "")) for s in sizes.split(",") if s]
    except ValueError:
        raise UsageError(f"--sizes {sizes!r}: expected comma-separated integers") from None
    kind_list = tuple(k.strip() for k in kinds.split(",") if k.strip())
    unknown = set(kind_list) - {"flat", "ivf", "hnsw"}
    if unknown:
        raise UsageError(f"--kinds: unknown {', '.join(sorted(unknown))} (flat, ivf, hnsw)")
    report = bench_indexes(size_list, dim, kind_list, queries, distribution, progress=reporter.info)
    columns = ["vectors", "kind", "build s", "params", "p50 ms", "p99 ms", "CPU p50 ms", "recall@10"]
    title = f"scl bench retrieve: {dim}-d {distribution} vectors, {queries} single queries, {report.threads} threads"
    reporter.table(title, columns, report.rows())
    if ckpt is not None or recipe is not None:
        report.rerank = bench_rerank(ckpt, recipe, candidates)
        reporter.table("re-rank (stage 2)", ["", "value"], [[k, v] for k, v in report.rerank.items()])
    if json_out is not None:
        report.write_json(json_out)
