"""SCL's effect, measured: the tiny recipe pre-trained for several seeds with every objective ("full")
and with the SCL terms off ("no_scl"), each checkpoint then evaluated zero-shot (ITC retrieval,
the shapes probe of `benchmarks/probe_shapes.py`, `scl align` on the shapes test split) and
fine-tuned on one task; mean +- std per arm.

    python benchmarks/ablation.py --data demo-run/data --seeds 0 1 2 [--out ablation-runs]
        [--recipe recipes/tiny.toml] [--finetune recipes/finetune/shapes_nlvr2.toml]

Every run goes through the `scl` command line in its own process, exactly as a user would run it,
and what is done is kept: re-running the command finishes an interrupted ablation. The table is
printed and written to OUT/ablation.md and OUT/ablation.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "full": [],
    "no_scl": ["--set", "objectives.scl_global.weight=0", "--set", "objectives.scl_local.weight=0"],
}


def scl(*args: str, log: Path) -> None:
    """Run `scl ARGS` (the venv's interpreter); its output goes to `log`; a failure stops the ablation."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "scl_cli.cli", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "CI": "1"})  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): scl {' '.join(args)} — see {log}")


def script(path: str, *args: str, log: Path) -> None:
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, str(ROOT / path), *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {path} {' '.join(args)} — see {log}")


def numbers(prefix: str, data: object, out: dict[str, float]) -> dict[str, float]:
    """Every number of a (nested) JSON report, keyed by its path."""
    if isinstance(data, dict):
        for key, value in data.items():
            numbers(f"{prefix}{key}." if not isinstance(value, int | float) else f"{prefix}{key}", value, out)
    elif isinstance(data, int | float) and not isinstance(data, bool):
        out[prefix.rstrip(".")] = float(data)
    return out


def check_settings(run: Path, arm: str, seed: int, args: argparse.Namespace) -> None:
    """What a run folder was made with (the recipes' bytes, the arm, seed and --set values) is kept in
    it; finishing an interrupted ablation with other recipes or settings would mix two experiments."""
    settings = {
        "recipe": hashlib.sha256(args.recipe.read_bytes()).hexdigest(),
        "finetune": hashlib.sha256(args.finetune.read_bytes()).hexdigest() if args.finetune else None,
        "arm": ARMS[arm], "seed": seed, "set": list(args.set), "data": str(args.data),
    }  # fmt: skip
    kept = run / "settings.json"
    if kept.is_file():
        if json.loads(kept.read_text()) != settings:
            raise SystemExit(f"{run} was made with another recipe or settings than this command's: "
                             "pass another --out, or delete it to redo it")  # fmt: skip
        return
    if run.exists() and any(run.iterdir()):
        raise SystemExit(f"{run} holds a run that does not say what it was made with: pass another --out, or delete it")
    run.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(settings, indent=1))


def one_run(arm: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    run = args.out / f"{arm}-seed{seed}"
    check_settings(run, arm, seed, args)
    data = args.data / "shapes"
    results: dict[str, float] = {}
    pretrained = run / "pretrain"
    if not (pretrained / "checkpoints").is_dir():
        sets = ["--set", f"optim.seed={seed}", "--set", f'data.root="{args.data}"', "--set", f'output.dir="{pretrained}"']
        sets += [a for s in args.set for a in ("--set", s)]
        scl("pretrain", str(args.recipe), *sets, *ARMS[arm], "--plain", log=run / "pretrain.log")
    metrics = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    final = metrics[-1]
    results |= {k: v for k, v in final.items() if k.startswith("eval/") and isinstance(v, int | float)}
    results["pretrain/loss"] = final["loss"]
    zero_shot = run / "zero_shot.json"
    if not zero_shot.is_file():
        scl("eval", "retrieval", "--ckpt", str(pretrained), "--data", str(data), "--split", "test", "--rerank", "0",
            "--out", str(zero_shot), log=run / "zero_shot.log")  # fmt: skip
    report = json.loads(zero_shot.read_text())["metrics"]
    results |= {f"zero_shot/{k}": v for k, v in report.items() if k in ("ir_r1", "tr_r1", "r_mean")}
    probe = run / "probe.json"
    if args.probe and not probe.is_file():
        script("benchmarks/probe_shapes.py", "--ckpt", str(pretrained), "--data", str(data), "--json", str(probe),
               log=run / "probe.log")  # fmt: skip
    if probe.is_file():
        results |= {f"probe/{k}": v for k, v in numbers("", json.loads(probe.read_text()).get("summary", {}), {}).items()}
    align = run / "align.json"
    if args.align and not align.is_file():
        scl("align", "--ckpt", str(pretrained), "--data", str(data), "--out", str(align), log=run / "align.log")
    if align.is_file():
        scores = json.loads(align.read_text())["scores"]
        results |= {f"align/{k}": 100 * v for k, v in scores.items() if not k.startswith("baseline")}
    if args.finetune is not None:
        tuned = run / "finetune"
        if not (tuned / "eval.json").is_file():
            sets = ["--set", f"optim.seed={seed}", "--set", f'data.root="{args.data}"', "--set", f'output.dir="{tuned}"']
            scl("finetune", str(args.finetune), "--ckpt", str(pretrained), *sets, "--plain", log=run / "finetune.log")
        report = json.loads((tuned / "eval.json").read_text())
        results |= {f"finetune/{k}": v for k, v in report["metrics"].items() if "/" not in k}
    return results


def table(per_arm: dict[str, list[dict[str, float]]]) -> tuple[str, dict]:
    keys = sorted({k for runs in per_arm.values() for r in runs for k in r})
    summary: dict[str, dict[str, list[float]]] = {}
    lines = ["| metric | " + " | ".join(f"{arm} (n={len(runs)})" for arm, runs in per_arm.items()) + " |",
             "|---|" + "---:|" * len(per_arm)]  # fmt: skip
    for key in keys:
        cells = []
        for arm, runs in per_arm.items():
            values = [r[key] for r in runs if key in r]
            if not values:
                cells.append("")
                continue
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary.setdefault(key, {})[arm] = [mean, std]
            cells.append(f"{mean:.3g} ± {std:.2g}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="data root holding a prepared shapes data set")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("ablation-runs"))
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "tiny.toml")
    parser.add_argument("--finetune", type=Path, default=ROOT / "recipes" / "finetune" / "shapes_nlvr2.toml")
    parser.add_argument("--no-finetune", dest="finetune", action="store_const", const=None)
    parser.add_argument("--no-probe", dest="probe", action="store_false")
    parser.add_argument("--no-align", dest="align", action="store_false")
    parser.add_argument("--set", action="append", default=[], help="extra --set for the pre-training runs")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    per_arm: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            print(f"== {arm}, seed {seed}", flush=True)
            per_arm[arm].append(one_run(arm, seed, args))
    text, summary = table(per_arm)
    minutes = (time.perf_counter() - started) / 60
    header = (f"Ablation of {args.recipe.name}: seeds {args.seeds}; fine-tuning "
              f"{args.finetune.name if args.finetune else 'none'} ({minutes:.0f} min)\n\n")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.md").write_text(header + text + "\n")
    (args.out / "ablation.json").write_text(json.dumps({"seeds": args.seeds, "runs": per_arm, "summary": summary}, indent=2))
    print(header + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
