"""The model card (`README.md`) of a saved or pushed model: what it is (architecture, heads, sizes),
how it was made (the recipe, the data sets' manifests) and how well it does (the `eval.json`
reports found with it), with the Hub's YAML metadata on top."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scl_cli import __version__
from scl_cli.data.shards import MANIFEST

PAPER = "https://arxiv.org/abs/2211.13437"


def find_reports(checkpoint: str | Path | None) -> list[dict[str, Any]]:
    """Evaluation reports (`scl eval` / `scl finetune` JSON) kept with a checkpoint: `eval.json` and
    `eval-*.json` in its folder and, for RUN/checkpoints/step-N, in the run folder."""
    if not checkpoint:
        return []
    folder = Path(str(checkpoint))
    folders = [folder] if folder.is_dir() else []
    if folder.parent.name == "checkpoints":
        folders.append(folder.parent.parent)
    reports = []
    for where in folders:
        for path in sorted(where.glob("eval*.json")):
            report = read_report(path)
            if report is not None:
                reports.append(report)
    return reports


def read_report(path: Path) -> dict[str, Any] | None:
    """An evaluation report (a JSON object with `task` and `metrics`), or None for any other file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return (
        data if isinstance(data, dict) and "task" in data and isinstance(data.get("metrics"), dict) else None
    )


def find_manifests(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `manifest.json` of each data set the checkpoint's recipe trained on, when still on disk
    (`data.root`/NAME/), without the per-shard lists."""
    recipe = config.get("recipe") or {}
    data = recipe.get("data") or {}
    names = list(data.get("train") or [])
    task = recipe.get("task") or {}
    if task.get("dataset"):
        names.append(task["dataset"])
    out = {}
    for name in dict.fromkeys(str(n).partition(":")[0] for n in names):
        path = Path(str(data.get("root", "data"))) / name / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(manifest, dict):
            splits = {
                k: {"samples": v.get("samples")}
                for k, v in (manifest.get("splits") or {}).items()
                if isinstance(v, dict)
            }
            out[name] = {
                **{k: v for k, v in manifest.items() if isinstance(v, str | int | float)},
                "splits": splits,
            }
    return out


def _yaml_list(name: str, values: list[str]) -> list[str]:
    return [f"{name}:"] + [f"- {json.dumps(v)}" for v in values] if values else []


def _architecture(model: dict[str, Any], parameters: int | None) -> list[str]:
    v, t, f = model.get("vision", {}), model.get("text", {}), model.get("fusion", {})
    rows = [
        ("vision", f"ViT {v.get('layers')} layers, width {v.get('width')}, {v.get('heads')} heads, "
                   f"{v.get('image_size')} px, patch {v.get('patch_size')}, up to {v.get('max_frames')} frames"),
        ("text", f"RoBERTa {t.get('layers')} layers, width {t.get('width')}, {t.get('heads')} heads, "
                 f"max {t.get('max_len')} tokens"),
        ("fusion", f"{f.get('layers')} co-attention layers per stream, width {f.get('width')}, {f.get('heads')} heads"),
        ("ITC", f"{model.get('itc_dim')}-d unit features (text: {model.get('itc_text_pool', 'cls')} token)"),
    ]  # fmt: skip
    if parameters:
        rows.append(("parameters", f"{parameters / 1e6:.1f} M"))
    return ["| part | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]


def _heads(heads: dict[str, Any]) -> list[str]:
    lines = ["- ITC (embeddings), ITM (match score), MLM: from pre-training"]
    if "vqa" in heads:
        vocab = heads["vqa"].get("vocabulary")
        lines.append(
            f"- VQA: {heads['vqa'].get('answers')} answers"
            + (f" (`{vocab}`)" if vocab else " (no answer list)")
        )
    if "nlvr2" in heads:
        lines.append("- NLVR2: true/false of a statement about an image pair")
    if "rank" in heads:
        lines.append("- retrieval rank head (the fusion score of `score`)")
    return lines


def _manifests(manifests: dict[str, dict[str, Any]]) -> list[str]:
    if not manifests:
        return [
            "Not recorded (the data sets' `manifest.json` were not found beside the recipe's `data.root`)."
        ]
    lines = ["| data set | version | source | splits (samples) |", "|---|---|---|---|"]
    for name, m in manifests.items():
        splits = m.get("splits") or {}
        counts = ", ".join(
            f"{split}: {entry.get('samples', entry.get('count', '?'))}"
            if isinstance(entry, dict)
            else f"{split}"
            for split, entry in splits.items()
        )
        source = m.get("source") or m.get("generator") or ""
        if isinstance(source, dict):
            source = ", ".join(f"{k}={v}" for k, v in source.items())
        lines.append(f"| {name} | {m.get('version', '')} | {str(source)[:80]} | {counts} |")
    return lines


def _metrics(reports: list[dict[str, Any]]) -> list[str]:
    if not reports:
        return ["No evaluation report (`eval.json`) was found with this checkpoint."]
    lines = ["| task | data set / split | metric | value | baseline |", "|---|---|---|---:|---:|"]
    for r in reports:
        for metric, value in (r.get("metrics") or {}).items():
            base = (r.get("baselines") or {}).get(metric)
            lines.append(f"| {r.get('task')} | {r.get('dataset')}/{r.get('split')} | {metric} | {value:.2f} | "
                         + (f"{base:.2f}" if isinstance(base, int | float) else "") + " |")  # fmt: skip
    return lines


def model_card(
    config: dict[str, Any],
    repo_id: str | None = None,
    parameters: int | None = None,
    reports: list[dict[str, Any]] | None = None,
    manifests: dict[str, dict[str, Any]] | None = None,
    recipe_toml: str | None = None,
) -> str:
    """README.md text for a model folder whose config.json is `config`."""
    heads = config.get("heads") or {}
    tags = ["scl", "vision-language", "image-text-retrieval", "feature-extraction"]
    tags += ["visual-question-answering"] if "vqa" in heads else []
    name = repo_id or "this model"
    origin = config.get("converted_from")
    made = (
        f"converted from the published checkpoint `{Path(str(origin.get('path'))).name}` (`scl convert`)"
        if isinstance(origin, dict)
        else f"trained with scl {config.get('scl_version', '')} for {config.get('step', '?')} steps"
        + (f", fine-tuned on {config['task'].get('name')}" if isinstance(config.get("task"), dict) else "")
    )
    lines = [
        "---",
        "library_name: scl-cli",
        "license: apache-2.0",
        *_yaml_list("tags", tags),
        "---",
        "",
        f"# {name}",
        "",
        f"An SCL vision-language model (Semantic Completion Learning, CVPR 2023, [{PAPER}]({PAPER})), {made}.",
        "",
        "## Use",
        "",
        "```python",
        "import scl_cli as scl",
        "",
        f'model = scl.load("{repo_id or "PATH"}")',
        'model.embed_images(["photo.jpg"])          # [N, E] unit ITC features',
        'model.embed_texts(["a red circle"])        # [N, E]',
        'model.score(["photo.jpg"], ["a red circle"])  # fusion match score',
    ]
    if "vqa" in heads:
        lines.append('model.answer("photo.jpg", "what colour is the circle?")')
    if "nlvr2" in heads:
        lines.append('model.nlvr2("left.jpg", "right.jpg", "the left image has two stars")')
    lines += [
        "```",
        "",
        "`pip install scl-cli`; `scl serve --ckpt " + (repo_id or "PATH") + "` puts it behind HTTP.",
        "",
    ]
    lines += [
        "## Architecture",
        "",
        *_architecture(config.get("model") or {}, parameters),
        "",
        "Heads:",
        "",
        *_heads(heads),
        "",
    ]
    lines += ["## Evaluation", "", *_metrics(reports or []), ""]
    lines += ["## Training data", "", *_manifests(manifests or {}), ""]
    if recipe_toml:
        lines += ["## Recipe", "", "The resolved recipe that produced these weights (`scl recipe show`):", "",
                  "```toml", recipe_toml.rstrip(), "```", ""]  # fmt: skip
    lines += [f"Card generated by scl {__version__}."]
    return "\n".join(lines) + "\n"
