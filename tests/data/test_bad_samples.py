"""Undecodable samples at training time: corrupt and truncated JPEGs and the members a truncated
shard lost are skipped and counted per reason, the run trains to its end and resumes exactly; too
many of them stop the run with one clear message."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scl_cli.config import load_recipe
from scl_cli.data.collate import ERROR_KEY
from scl_cli.data.manifests import load_sources
from scl_cli.data.sampling import SlotReader
from scl_cli.engines.pretrain import pretrain
from scl_cli.errors import TrainingError

from ..conftest import RECIPES


def _rewrite(shard: Path, change) -> None:
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            data = change(member.name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def damaged_copy(shapes_root: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The shapes data set with sample 1 of each train shard broken (three corrupt JPEGs, one cut
    in half) and the last shard cut off inside its 13th sample (four members lost)."""
    root = tmp_path / "data"
    shutil.copytree(shapes_root / "shapes", root / "shapes")
    shards = sorted((root / "shapes" / "train").glob("*.tar"))
    bad: dict[str, str] = {}
    for i, shard in enumerate(shards):
        with tarfile.open(shard) as tar:
            key = sorted({m.name.partition(".")[0] for m in tar.getmembers()})[1]
        reason = "corrupt_image" if i < len(shards) - 1 else "truncated_image"
        bad[key] = reason

        def change(name: str, data: bytes, key=key, reason=reason) -> bytes:
            if name != f"{key}.jpg":
                return data
            return b"this is not a JPEG" if reason == "corrupt_image" else data[: len(data) // 2]

        _rewrite(shard, change)
    last = shards[-1]
    with tarfile.open(last) as tar:
        members = tar.getmembers()
    keys = sorted({m.name.partition(".")[0] for m in members})
    cut = next(m for m in members if m.name.startswith(keys[12]))
    with open(last, "r+b") as f:
        f.truncate(cut.offset_data + 100)  # inside the 13th sample's first member
    for index in range(12, 16):
        bad[f"{last.name}#{index}"] = "truncated_shard"
    return root, bad


def recipe(root: Path, run: Path, **sets):
    values = {
        "data.root": f'"{root}"', "output.dir": f'"{run}"', "data.num_workers": 2, "optim.batch_size": 4,
        "optim.max_steps": 10, "log.every": 1, "log.loggers": "[]", "output.checkpoint_every": 5,
        "output.keep_last": 5, "topology.device": "cpu", "data.max_bad_samples": 0.2, **sets,
    }  # fmt: skip
    return load_recipe(RECIPES / "tiny.toml", [f"{k}={v}" for k, v in values.items()])


def expected_counts(root: Path, bad: dict[str, str], read_per_worker: list[int], rec) -> Counter:
    """Reasons of the samples each worker's reader gave, in its own order, independently of the
    stream: what the run must have counted."""
    (source,) = load_sources(root, ["shapes"], "train")
    workers = len(read_per_worker)
    counts: Counter = Counter()
    for worker, read in enumerate(read_per_worker):
        shards = [s for i, s in enumerate(source.shards) if i % workers == worker]
        reader = SlotReader(shards, rec.optim.seed, 0, 0, worker, rec.data.shuffle_buffer).samples(0)
        for _ in range(read):
            sample, _ = next(reader)
            key = sample["__key__"]
            if ERROR_KEY in sample or key in bad:
                counts[sample.get(ERROR_KEY) or bad[key]] += 1
    return counts


def test_a_shard_with_corrupt_members_trains_to_the_end_with_the_right_counts(shapes_root, tmp_path):
    root, bad = damaged_copy(shapes_root, tmp_path)
    run = tmp_path / "run"
    rec = recipe(root, run)
    result = pretrain(rec)
    assert result.steps == 10
    state = torch.load(run / "checkpoints" / "step-10" / "training_state.pt", weights_only=True)["data_skips"]
    per_worker = [5 * 4 + sum(row) for row in state["extra"]]  # batch b came from worker b % 2
    want = expected_counts(root, bad, per_worker, rec)
    assert set(want) == {"corrupt_image", "truncated_image", "truncated_shard"}, want
    assert {k: v for k, v in state["counts"].items() if v} == dict(want)
    assert state["read"] == 10 * 4 + sum(want.values())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["samples_skipped"] == sum(want.values())
    assert all(last[f"samples_skipped/{reason}"] == n for reason, n in want.items())

    # exact resume: the replacements for skipped samples are replayed from the training state
    early = torch.load(run / "checkpoints" / "step-5" / "training_state.pt", weights_only=True)["data_skips"]
    assert sum(map(sum, early["extra"])) > 0, "no sample was skipped before step 5: the resume check is empty"
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-10")
    pretrain(recipe(root, resumed), resume=True)
    a = load_file(str(run / "checkpoints" / "step-10" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-10" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = torch.load(resumed / "checkpoints" / "step-10" / "training_state.pt", weights_only=True)[
        "data_skips"
    ]
    assert again == state


def test_too_many_bad_samples_stop_the_run(shapes_root, tmp_path):
    root, _ = damaged_copy(shapes_root, tmp_path)
    with pytest.raises(
        TrainingError, match=r"could not be decoded \(.*corrupt_image.*data.max_bad_samples = 0.01"
    ):
        pretrain(recipe(root, tmp_path / "run", **{"data.max_bad_samples": 0.01, "optim.max_steps": 20,
                                                   "data.num_workers": 0}))  # fmt: skip
