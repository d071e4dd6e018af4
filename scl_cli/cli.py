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
    name: Annotated[
        str,
        typer.Argument(
            help="Data set: shapes (synthetic, offline), coco, vg, sbu, cc3m (pre-training), "
            "f30k, vqav2, nlvr2 (fine-tuning; coco too), webvid (video pre-training), msrvtt, lsmdc "
            "(video retrieval)."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Root folder; the data set is written to OUT/NAME/.")
    ] = Path("data"),
    source: Annotated[
        list[Path] | None,
        typer.Option("--source", help="The official download: a folder or file (repeatable; see README)."),
    ] = None,
    webdataset: Annotated[
        list[Path] | None,
        typer.Option("--webdataset", help="cc3m/sbu: an existing img2dataset WebDataset download instead."),
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option("--split", help="Split to write (repeatable; default: all present).")
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", min=0, help="Shorter side of stored images (0: as is; default 384)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most N inputs per split: a quick look.")
    ] = None,
    shard_size: Annotated[int | None, typer.Option("--shard-size", min=1, help="Samples per shard.")] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="Concurrent downloads per worker (default 32).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.01, help="Download timeout in seconds (default 10).")
    ] = None,
    retries: Annotated[
        int | None, typer.Option("--retries", min=0, help="Download retries, with back-off (default 2).")
    ] = None,
    images: Annotated[
        int | None, typer.Option("--images", min=10, help="shapes: number of images in all splits (10000).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="shapes: generator seed (same seed, same bytes).")
    ] = None,
    clips: Annotated[
        int | None,
        typer.Option("--clips", min=0, help="shapes: clips of a moving shape in all splits (default: a fifth of --images; 0 = none)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker processes (default: all cores).")
    ] = None,
    plain: PlainOpt = False,
) -> None:
    """Turn a data set into WebDataset shards + manifest.json (+ tokenizer for shapes).

    Unusable inputs are skipped and listed in the manifest; re-running the same command resumes."""
    from scl_cli.prepare import prepare as prepare_engine
    from scl_cli.reporting import StageProgress, make_reporter

    given = {
        "source": source, "webdataset": webdataset, "split": split, "image_size": image_size, "limit": limit,
        "shard_size": shard_size, "threads": threads, "timeout": timeout, "retries": retries,
        "images": images, "seed": seed, "workers": workers, "clips": clips,
    }  # fmt: skip
    options = {key: value for key, value in given.items() if value not in (None, [])}
    reporter = make_reporter(force_plain=plain)
    try:
        with StageProgress(reporter) as progress:
            summary = prepare_engine(name, out, progress=progress, **options)
    except KeyboardInterrupt:
        if name != "shapes":
            reporter.warn("interrupted: finished shards are kept; run the same command again to resume")
        raise
    rows = [["images", split, n] for split, n in summary.splits.items()]
    rows += [[group, split, n] for group, counts in summary.tasks.items() for split, n in counts.items()]
    reporter.table(f"{name} -> {summary.path} ({summary.seconds:.1f} s)", ["part", "split", "samples"], rows)
    totals = [["read", summary.read], ["written", summary.written]]
    totals += [[f"skipped {what}: {reason}", n] for what, reasons in summary.skipped_by_what.items()
               for reason, n in reasons.items()]  # fmt: skip
    totals += [["resumed shards", summary.resumed_shards]] if summary.resumed_shards else []
    totals += [["time (s)", round(summary.seconds, 1)], ["images/s", round(summary.images_per_s, 1)]]
    reporter.table(f"{name}: summary", ["", "count"], totals)
    for warning in summary.warnings:
        reporter.warn(warning)
    if summary.written == 0:
        from scl_cli.data.pipeline import nothing_written
        from scl_cli.errors import DataError

        raise DataError(nothing_written(summary.path, summary.read, summary.skipped_by_what.get("sample", {})))


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
    OUTPUT/checkpoints/step-N/). A topology of several devices or nodes starts itself through
    torchrun (or prints each node's command; see README, Distributed training)."""
    from scl_cli.pretrain import pretrain as pretrain_engine
    from scl_cli.recipe import load_recipe
    from scl_cli.reporting import make_reporter
    from scl_cli.training.launch import is_main_process, launched_by_scl

    loaded = load_recipe(recipe, set_ or [])
    reporter = make_reporter(force_plain=plain, quiet=not is_main_process())
    # What every torchrun process is started with, if the topology needs a launch.
    launch_args = ["pretrain", str(recipe), *(f"--set={s}" for s in set_ or [])]
    launch_args += ["--resume"] * resume + ["--plain"] * plain
    result = pretrain_engine(loaded, resume=resume, reporter=reporter, launch_args=launch_args)
    # One summary: from the launcher, or from rank 0 of a run started by torchrun/srun directly.
    if result.first_loss is not None and is_main_process() and not launched_by_scl():
        reporter.info(
            f"finished step {result.steps}: loss {result.first_loss:.4f} -> {result.last_loss:.4f}; "
            f"checkpoint {result.last_checkpoint}"
        )


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
    from scl_cli.convert import REPORT_FILE, convert_official
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


@app.command()
def finetune(
    recipe: RecipeArg,
    ckpt: Annotated[
        Path,
        typer.Option("--ckpt", help="Checkpoint dir, run dir (newest checkpoint) or a published SCL .ckpt file."),
    ],
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue this run from its newest checkpoint.")] = False,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the evaluation at the end.")] = False,
    plain: PlainOpt = False,
) -> None:
    """Fine-tune a checkpoint on the recipe's [task] (VQA, NLVR2, retrieval), then evaluate it."""
    from scl_cli.finetune import finetune as finetune_engine
    from scl_cli.recipe import load_recipe
    from scl_cli.reporting import make_reporter

    loaded = load_recipe(recipe, set_ or [])
    reporter = make_reporter(force_plain=plain)
    result = finetune_engine(loaded, ckpt, resume=resume, reporter=reporter, evaluate_after=not no_eval)
    train = result.train
    if train.first_loss is not None:
        reporter.info(f"finished step {train.steps}: loss {train.first_loss:.4f} -> {train.last_loss:.4f}; "
                      f"checkpoint {train.last_checkpoint}")  # fmt: skip
    if result.evaluation is not None:
        report = result.evaluation
        report.write_json(Path(loaded.output.dir) / "eval.json")
        reporter.table(f"{report.task} on {report.dataset}/{report.split} ({report.samples} samples)",
                       ["metric", "value", "baseline"], report.rows())  # fmt: skip


@app.command("eval")
def eval_(
    task: Annotated[str, typer.Argument(help="vqa | nlvr2 | retrieval")],
    ckpt: Annotated[
        Path | None,
        typer.Option("--ckpt", help="Checkpoint dir, run dir (newest checkpoint) or a published SCL .ckpt file."),
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Data set folder (with manifest.json) or name under the data root.")
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split to evaluate (default: the task's).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="JSON report path (default: eval-TASK.json).")] = None,
    rerank: Annotated[
        str | None, typer.Option("--rerank", help="Retrieval: re-rank the top K by the fusion score; 0 = ITC only; 'all'.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per encoder batch.")] = 32,
    predictions: Annotated[
        Path | None, typer.Option("--predictions", help="vqa: score this predictions file without a model.")
    ] = None,
    questions: Annotated[Path | None, typer.Option("--questions", help="vqa: VQAv2 questions JSON.")] = None,
    annotations: Annotated[Path | None, typer.Option("--annotations", help="vqa: VQAv2 annotations JSON.")] = None,
    plain: PlainOpt = False,
) -> None:
    """Evaluate with the official metrics; prints a table and writes a JSON report."""
    import json as _json

    from scl_cli.errors import UsageError
    from scl_cli.reporting import StageProgress, make_reporter

    reporter = make_reporter(force_plain=plain)
    if predictions is not None:
        from scl_cli.evaluation.vqa_files import score_prediction_files

        if task != "vqa" or questions is None or annotations is None:
            raise UsageError("--predictions scores VQA files: pass it with `vqa --questions Q.json --annotations A.json`")
        scores = score_prediction_files(predictions, questions, annotations)
        rows = [[k, f"{v:.2f}" if isinstance(v, float) else str(v)] for k, v in scores.items() if not isinstance(v, dict)]
        reporter.table(f"VQA accuracy of {predictions}", ["metric", "value"], rows)
        if out is not None:
            out.write_text(_json.dumps(scores, indent=2) + "\n")
        return
    if ckpt is None:
        raise UsageError("pass --ckpt CHECKPOINT (or --predictions for scoring a VQA predictions file)")
    from scl_cli.evaluate import evaluate

    k: int | str | None = None
    if rerank is not None:
        if rerank != "all" and not rerank.isdigit():
            raise UsageError(f"--rerank {rerank!r}: expected a number of candidates, 0, or 'all'")
        k = rerank if rerank == "all" else int(rerank)
    with StageProgress(reporter) as progress:
        report = evaluate(task, ckpt, data=data, split=split, rerank=k, batch_size=batch_size, progress=progress)
    reporter.table(f"{report.task} on {report.dataset}/{report.split} ({report.samples} samples, "
                   f"{report.seconds:.1f} s)", ["metric", "value", "baseline"], report.rows())  # fmt: skip
    path = out or Path(f"eval-{task}.json")
    report.write_json(path)
    if task == "vqa" and not report.metrics and report.details.get("predictions"):
        from scl_cli.evaluation.vqa_files import write_submission

        submission = path.with_name(path.stem + "-submission.json")
        write_submission(submission, {p["question_id"]: p["answer"] for p in report.details["predictions"]})
        reporter.info(f"no answers in this split: wrote the submission file {submission}")
    reporter.info(f"report: {path}")


@app.command("index")
def index_(
    ckpt: Annotated[
        Path,
        typer.Option(
            "--ckpt", help="Checkpoint dir, run dir (newest checkpoint) or a published SCL .ckpt file."
        ),
    ],
    images: Annotated[
        Path | None,
        typer.Option(
            "--images", help="Folder of images (jpg/png/webp/gif) and videos, searched recursively."
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="A prepared data set folder (with manifest.json) instead.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="--data: the split to index.")] = "test",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Index folder (default: CKPT/indexes/NAME, found by `scl retrieve --ckpt`)."
        ),
    ] = None,
    kind: Annotated[
        str, typer.Option("--kind", help="auto (exact below 50k vectors, else ivf) | flat | ivf | hnsw.")
    ] = "auto",
    add: Annotated[
        bool,
        typer.Option("--add", help="Append new images to an existing index (old ones are not re-embedded)."),
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per encoder batch.")] = 32,
    frames: Annotated[
        int, typer.Option("--frames", min=1, help="Frames per video (its feature: the mean over frames).")
    ] = 4,
    plain: PlainOpt = False,
) -> None:
    """Embed every image with the checkpoint's ITC projection into a faiss index (+ metadata and the
    checkpoint's fingerprint). Interrupted? Run the same command again: finished parts are kept."""
    from scl_cli.index import build_index
    from scl_cli.reporting import StageProgress, make_reporter

    reporter = make_reporter(force_plain=plain)
    try:
        with StageProgress(reporter) as progress:
            s = build_index(ckpt, out, images, data, split, kind, add, batch_size, frames, progress=progress,
                            info_message=reporter.info)  # fmt: skip
    except KeyboardInterrupt:
        reporter.warn("interrupted: embedded parts are kept; run the same command again to resume")
        raise
    rows = [["index", str(s.path)], ["kind", s.kind + "".join(f" {k}={v}" for k, v in s.params.items())],
            ["vectors", s.total], ["added", s.added]]  # fmt: skip
    rows += [[f"skipped: {reason}", n] for reason, n in s.skipped.items()]
    rows += [["resumed parts", s.resumed_parts]] if s.resumed_parts else []
    rows += [["checkpoint fingerprint", s.fingerprint[:12]], ["time (s)", round(s.seconds, 1)],
             ["images/s", round(s.images_per_s, 1)]]  # fmt: skip
    reporter.table("scl index", ["", "value"], rows)


@app.command()
def retrieve(
    query: Annotated[str | None, typer.Option("--query", help="Text to search images for.")] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Image (or video) file: find similar images.")
    ] = None,
    index: Annotated[Path | None, typer.Option("--index", help="Index folder from `scl index`.")] = None,
    ckpt: Annotated[
        Path | None,
        typer.Option("--ckpt", help="Checkpoint (default: the index's); alone, uses its newest index."),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option("--images", help="Search this folder: indexes it first (cached, new files appended)."),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Hits to show.")] = 10,
    rerank: Annotated[
        int,
        typer.Option(
            "--rerank",
            min=0,
            help="Re-score the top K with the fusion score (rank head or ITM); 0 = ITC only.",
        ),
    ] = 0,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the hits as JSON (for scripts) instead of a table.")
    ] = False,
    grid: Annotated[
        Path | None, typer.Option("--grid", help="Also write a contact sheet PNG of the hits.")
    ] = None,
    plain: PlainOpt = False,
) -> None:
    """Search an index by text (--query) or by image (--image): stage 1 ITC from the index, stage 2
    (--rerank K) the fusion score of the top K."""
    import json as _json

    from scl_cli.reporting import StageProgress, make_reporter
    from scl_cli.retrieve import retrieve as retrieve_engine

    reporter = make_reporter(force_plain=plain)

    def build(ckpt_path: Path, folder: Path) -> Path:
        from scl_cli.index import build_index
        from scl_cli.retrieval.store import default_index_dir, images_dir_name, is_index

        out = default_index_dir(ckpt_path, images_dir_name(folder))
        with StageProgress(reporter) as progress:
            s = build_index(
                ckpt_path,
                out,
                images=folder,
                add=is_index(out),
                progress=progress,
                info_message=reporter.info,
            )
        if s.added:
            reporter.info(f"indexed {s.added} new images of {folder} into {out} ({s.total} in all)")
        for reason, n in s.skipped.items():
            reporter.warn(f"skipped {n} files of {folder}: {reason}")
        return out

    result = retrieve_engine(query, image, index, ckpt, images, top_k, rerank, grid, build)
    if json_out:
        typer.echo(_json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        rows = [[h.rank, f"{h.score:.4f}" + (" *" if h.stage == "rerank" else ""), h.label + (" (missing)" if h.missing else ""),
                 h.captions[0] if h.captions else ""] for h in result.hits]  # fmt: skip
        scorer = "" if result.scorer == "itc" else f"; * = {result.scorer} of the top {result.rerank}"
        reporter.table(f"{result.mode}: {result.query!r} ({result.index}; ITC cosine{scorer}; "
                       f"search {1000 * result.seconds['search']:.1f} ms, re-rank {1000 * result.seconds['rerank']:.0f} ms)",
                       ["rank", "score", "path", "caption"], rows)  # fmt: skip
    if result.missing:
        first = result.missing[0].label
        reporter.warn(f"{len(result.missing)} of {len(result.hits)} hits are missing on disk (first: {first}) — "
                      "rebuild the index (scl index) if the collection moved")  # fmt: skip
    if grid is not None:
        reporter.info(f"contact sheet: {grid}")


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
    from scl_cli.bench import bench_pretrain as bench_engine
    from scl_cli.recipe import load_recipe
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
    from scl_cli.bench_retrieve import bench_indexes, bench_rerank
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
