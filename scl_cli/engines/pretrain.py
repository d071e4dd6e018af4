"""Engine of `scl pretrain`: build everything a recipe names, then hand it to the training run;
`reproduce` re-runs the first steps of an earlier run and compares the losses."""

from __future__ import annotations

import json
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from scl_cli.config import Recipe, recipe_to_dict
from scl_cli.data.shard_cache import configure_remote
from scl_cli.data.tokenizer import TextTokenizer, load_tokenizer
from scl_cli.errors import CheckpointError, UsageError
from scl_cli.io.checkpoints import CONFIG_FILE, list_checkpoints
from scl_cli.io.provenance import git_state, package_versions
from scl_cli.model import SCLModel
from scl_cli.objectives.masking import TextSpec
from scl_cli.reporting import NullReporter, Reporter
from scl_cli.training import launch
from scl_cli.training.checkpointing import checkpoint_config, existing_checkpoint, reproduction_record
from scl_cli.training.loggers import METRICS_FILE
from scl_cli.training.run import run_training
from scl_cli.training.runtime import Runtime, seed_everything, setup_runtime
from scl_cli.training.step import TrainStep, build_train_step
from scl_cli.training.trainer import TrainResult


def build_model(recipe: Recipe, tokenizer: TextTokenizer) -> SCLModel:
    vocab = recipe.model.text.vocab_size or tokenizer.vocab_size
    if vocab < tokenizer.vocab_size:
        raise UsageError(
            f"model.text.vocab_size {vocab} is smaller than the tokenizer's vocabulary ({tokenizer.vocab_size})"
        )
    return SCLModel.from_recipe_model(recipe.model, vocab, tokenizer.pad_id)


@dataclass
class Built:
    runtime: Runtime
    tokenizer: TextTokenizer
    model: SCLModel
    step_module: TrainStep


def build(recipe: Recipe) -> Built:
    """Runtime, tokenizer, model and step module for a recipe."""
    runtime = setup_runtime(recipe.topology)
    seed_everything(recipe.optim.seed)
    configure_remote(recipe.data)
    tokenizer = load_tokenizer(recipe.model.text.tokenizer, recipe.data.root, recipe.data.train[0])
    model = build_model(recipe, tokenizer)
    step = build_train_step(recipe, model, TextSpec.from_tokenizer(tokenizer, model.vocab_size), runtime)
    return Built(runtime, tokenizer, model, step)


def pretrain(
    recipe: Recipe,
    resume: bool = False,
    reporter: Reporter | None = None,
    launch_args: list[str] | None = None,
) -> TrainResult:
    """Pre-train as the recipe says; with `resume`, continue from the newest complete checkpoint.

    A topology of several processes started outside torchrun is launched through torchrun
    (see `training.launch`): `launch_args` are the `scl` arguments each process gets (the CLI
    passes its own; by default the resolved recipe is written to OUTPUT/launch-recipe.toml).
    """
    reporter = reporter or NullReporter()
    run_dir = Path(recipe.output.dir)
    found = existing_checkpoint(run_dir, resume)
    configure_remote(recipe.data)
    launch.adopt_slurm_tasks(recipe.topology)
    if launch.needs_launch(recipe.topology):
        return launch.launch_run(recipe, "pretrain", resume, reporter, launch_args)
    launch.check_world(recipe.topology, "pretrain")

    b = build(recipe)
    if resume and found is None:
        reporter.info(f"no checkpoint in {run_dir}: starting from step 0")
    result = run_training(
        recipe, b.model, b.tokenizer, b.step_module, b.runtime, run_dir,
        resume_from=found,
        datasets=recipe.data.train, split=recipe.data.split,
        config=checkpoint_config(recipe, b.model), reporter=reporter,
    )  # fmt: skip
    b.runtime.teardown()
    return result


# ----------------------------------------------------------------------------- --reproduce
@dataclass
class ReproduceReport:
    run: Path
    steps: int
    exact: bool  # bit-exact comparison (same machine, packages, topology), else `tolerance`
    tolerance: float
    rows: list[list[str]] = field(default_factory=list)  # step, value, recorded, now, difference
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what differs from the recorded run

    @property
    def matches(self) -> bool:
        return not self.mismatches and bool(self.rows)


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _recorded(run: Path) -> tuple[dict, list[dict]]:
    """The run's reproduction record and recipe (its first checkpoint's config.json) and metrics."""
    checkpoints = list_checkpoints(run)
    if not checkpoints:
        raise CheckpointError(f"{run}: no checkpoints/step-N/ here — --reproduce takes the folder of a run")
    config = json.loads((checkpoints[0] / CONFIG_FILE).read_text(encoding="utf-8"))
    metrics = Path(run) / METRICS_FILE
    if not metrics.is_file():
        raise CheckpointError(f"{metrics}: missing — the losses to compare with are in it")
    rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    return config, rows


def _differences(recipe: Recipe, config: dict, runtime_record: dict) -> tuple[list[str], bool]:
    """Notes on what differs from the recorded run, and whether the machine counts as the same."""
    notes = []
    then = _flatten(config.get("recipe") or {})
    now = _flatten(recipe_to_dict(recipe))
    changed = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k) and k != "output.dir")
    if changed:
        shown = ", ".join(f"{k} {then.get(k)!r} -> {now.get(k)!r}" for k in changed[:8])
        notes.append(f"recipe differs: {shown}{' ...' if len(changed) > 8 else ''}")
    record = config.get("reproduction") or {}
    for name, entry in (record.get("data") or {}).items():
        current = (runtime_record["data"].get(name) or {}).get("sha256")
        if entry.get("sha256") != current:
            notes.append(f"data set {name}: its manifest changed since the run (sha256 differs)")
    git_then, git_now = record.get("git") or {}, git_state()
    if git_then.get("commit") != git_now.get("commit") or git_now.get("dirty"):
        notes.append(f"code: run at {git_then.get('commit')}{' (dirty)' if git_then.get('dirty') else ''}, "
                     f"now {git_now.get('commit')}{' (dirty)' if git_now.get('dirty') else ''}")  # fmt: skip
    same_machine = (
        (record.get("machine") or {}).get("hostname") == socket.gethostname()
        and record.get("topology") == runtime_record["topology"]
        and record.get("packages") == package_versions()
    )
    if not same_machine:
        notes.append(
            "another machine, topology or package set than the recorded run: compared with a tolerance"
        )
    return notes, same_machine


def reproduce(recipe: Recipe, run: Path, steps: int | None = None, tolerance: float = 1e-3,
              reporter: Reporter | None = None) -> ReproduceReport:  # fmt: skip
    """Re-run the first `steps` steps (default: up to 20 of those the run logged) of run folder
    `run` with `recipe`, in a temporary folder, and compare the logged losses: bit-exact when the
    machine, packages and topology are the recorded ones, else within `tolerance` (relative)."""
    reporter = reporter or NullReporter()
    run = Path(run)
    config, rows = _recorded(run)
    logged = [r for r in rows if isinstance(r.get("step"), int)]
    if not logged:
        raise CheckpointError(f"{run / METRICS_FILE}: no logged step to compare with")
    steps = steps or min(20, max(r["step"] for r in logged))
    if launch.needs_launch(recipe.topology):
        raise UsageError(
            f"--reproduce runs the recipe's {recipe.topology.world_size} processes only inside torchrun: "
            f"torchrun --nproc-per-node {recipe.topology.devices_per_node} -m scl_cli.cli pretrain RECIPE "
            f"--reproduce {run}"
        )
    built = build(recipe)
    with tempfile.TemporaryDirectory(prefix="scl-reproduce-") as tmp:
        trial = recipe.model_copy(deep=True)
        trial.output.dir = Path(tmp)
        trial.output.checkpoint_every = trial.optim.max_steps + 1  # no checkpoint is written
        trial.log.loggers = []
        record = reproduction_record(trial, built.runtime, trial.data.train)
        notes, same = _differences(recipe, config, record)
        reporter.info(f"re-running steps 1-{steps} of {run} ...")
        result = run_training(
            trial, built.model, built.tokenizer, built.step_module, built.runtime, Path(tmp),
            resume_from=None, datasets=trial.data.train, split=trial.data.split,
            config=checkpoint_config(trial, built.model), reporter=reporter, stop_at=steps,
        )  # fmt: skip
    built.runtime.teardown()
    report = ReproduceReport(run, steps, exact=same, tolerance=0.0 if same else tolerance, notes=notes)
    now = {row["step"]: row for row in result.history}
    keys = ["loss", *recipe.enabled_objectives()]
    for then in (r for r in logged if r["step"] <= steps):
        current = now.get(then["step"])
        if current is None:
            continue
        for key in (k for k in keys if k in then and k in current):
            was, now_value = float(then[key]), float(current[key])
            diff = abs(was - now_value)
            ok = was == now_value if same else diff <= tolerance * max(1.0, abs(was))
            report.rows.append([str(then["step"]), key, f"{was:.6g}", f"{now_value:.6g}", f"{diff:.2e}",
                                "ok" if ok else "DIFFERS"])  # fmt: skip
            if not ok:
                report.mismatches.append(f"step {then['step']} {key}: {was!r} then, {now_value!r} now")
    if not report.rows:
        report.mismatches.append(f"no logged step of {run} within the first {steps} steps to compare")
    return report
