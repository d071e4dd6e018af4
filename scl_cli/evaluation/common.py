"""What every evaluation shares: the report (`EvalReport`), where to evaluate (`resolve_data`), and
batching helpers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scl_cli.config.location import is_url
from scl_cli.data.manifests import parse_source
from scl_cli.io.atomic import atomic_write_json


@dataclass
class EvalReport:
    task: str
    checkpoint: str
    dataset: str
    split: str
    samples: int
    seconds: float
    metrics: dict[str, float]
    baselines: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[list[str]]:
        rows = [
            [k, f"{v:.2f}", f"{self.baselines[k]:.2f}" if k in self.baselines else ""]
            for k, v in self.metrics.items()
        ]
        return rows

    @classmethod
    def read_json(cls, path: Path) -> EvalReport:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))

    def write_json(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, asdict(self))


@dataclass
class EvalData:
    root: Path | str
    dataset: str
    group: str
    split: str


def resolve_data(config: dict[str, Any], data: str | None, split: str | None, task: str) -> EvalData:
    """Where to evaluate: `--data` (a data set folder or a name under the recipe's data.root), else
    the data set the checkpoint was fine-tuned on, else `shapes`; `--split`, else the recipe's
    evaluation split, else `test`."""
    recipe = config.get("recipe") or {}
    saved_root = (recipe.get("data") or {}).get("root", "data")
    root: Path | str = saved_root if is_url(saved_root) else Path(saved_root)
    saved = recipe.get("task") or {}
    same_task = saved.get("name") == task
    dataset = saved.get("dataset", "shapes") if same_task else "shapes"
    group = saved.get("group", "splits") if same_task else ("nlvr2" if task == "nlvr2" else "splits")
    if data is not None:
        # "PATH:GROUP" / "NAME:GROUP" picks a manifest group, e.g. data/shapes:clips for the clips.
        data, named_group = parse_source(data, "")
        path = Path(data)
        if is_url(data):  # a data set behind a URL: its own location
            dataset = data
        elif (path / "manifest.json").is_file():
            root, dataset = path.parent, path.name
        else:
            dataset = data
        group = named_group or ("nlvr2" if task == "nlvr2" and dataset == "shapes" else "splits")
    chosen = split or (saved.get("eval_split") if same_task else None) or "test"
    return EvalData(root, dataset, group, chosen)


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
