"""Interrupted prepares (SIGKILL, Ctrl-C) resume without redoing finished shards or doubling samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scl_cli.data.shards import verify_shards
from scl_cli.engines.prepare import prepare
from scl_cli.errors import UsageError

from .http_fixture import ImageServer
from .realdata import check_manifest, make_coco, samples

ROOT = Path(__file__).resolve().parents[2]
N = 24  # inputs, 3 per shard: 8 shards
ARGS = {"shard_size": 3, "threads": 1, "image_size": 32, "timeout": 5.0}


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer(delay=0.06) as running:  # every image takes 0.06 s: a run lasts a few seconds
        yield running


def url_list(folder: Path, server: ImageServer) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"caption number {i}\t{server.url}/delay/{i}.jpg" for i in range(N)]
    path = folder / "Train_GCC-training.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(tsv: Path, out: Path, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "scl_cli.cli", "prepare", "cc3m", "--source", str(tsv), "--out", str(out),
           "--workers", str(workers), "--plain"]  # fmt: skip
    for key, value in ARGS.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    # A test session started in the background (`make test &` in a script) inherits an ignored SIGINT,
    # and Python keeps it ignored: the child gets the default, as a terminal's Ctrl-C would find it.
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CI": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


def wait_for_shards(out: Path, proc: subprocess.Popen, at_least: int, limit: float = 60.0) -> list[Path]:
    states = out / "cc3m" / ".shards" / "train"
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done = sorted(states.glob("*.json")) if states.is_dir() else []
        if len(done) >= at_least:
            return done
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("prepare made no progress")


def stamps(paths: list[Path]) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def assert_complete(out: Path) -> None:
    dataset = out / "cc3m"
    check_manifest(dataset)
    ids = sorted(s["meta"]["id"] for s in samples(dataset, "train"))
    assert ids == [f"train_{i:07d}" for i in range(N)]  # all present, none twice
    assert verify_shards(dataset) == []
    assert not list(dataset.rglob("*.partial"))


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_then_rerun_resumes(tmp_path: Path, server: ImageServer, workers: int) -> None:
    tsv, out = url_list(tmp_path / "src", server), tmp_path / "out"
    proc = start(tsv, out, workers=workers)
    wait_for_shards(out, proc, at_least=3)
    pool = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 5  # orphaned workers notice their parent is gone and exit
    while any(running(p) for p in pool) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(running(p) for p in pool)
    assert not (out / "cc3m" / "manifest.json").exists()
    states = sorted((out / "cc3m" / ".shards" / "train").glob("*.json"))
    tars = [out / "cc3m" / "train" / s.name.replace(".json", ".tar") for s in states]
    finished_inputs = [int(i.split("_")[1]) for s in states for i in json.loads(s.read_text())["ids"]]
    before, fetched = stamps(tars + states), dict(server.counts)
    summary = prepare("cc3m", out, source=[tsv], workers=workers, **ARGS)
    assert summary.resumed_shards == len(states) and summary.splits == {"train": N}
    assert stamps(tars + states) == before  # finished shards untouched
    # Images of finished shards were downloaded once, over both runs.
    assert all(server.counts[f"/delay/{i}.jpg"] == fetched[f"/delay/{i}.jpg"] == 1 for i in finished_inputs)
    assert all(server.counts[f"/delay/{i}.jpg"] >= 1 for i in range(N))
    assert_complete(out)


def test_ctrl_c_with_workers_then_rerun(tmp_path: Path, server: ImageServer) -> None:
    tsv, out = url_list(tmp_path / "src", server), tmp_path / "out"
    proc = start(tsv, out, workers=2)
    wait_for_shards(out, proc, at_least=2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    summary = prepare("cc3m", out, source=[tsv], workers=2, **ARGS)
    assert summary.resumed_shards >= 2
    assert_complete(out)


def test_rerun_same_arguments_redoes_nothing_other_arguments_replace(tmp_path: Path) -> None:
    make_coco(tmp_path / "src")
    first = prepare(
        "coco", tmp_path / "out", source=[tmp_path / "src"], workers=1, image_size=32, shard_size=2
    )
    again = prepare(
        "coco", tmp_path / "out", source=[tmp_path / "src"], workers=1, image_size=32, shard_size=2
    )
    dataset = tmp_path / "out" / "coco"
    shards = len(list((dataset / ".shards").rglob("*.json")))
    assert (
        again.resumed_shards == shards == 7
        and again.splits == first.splits
        and again.skipped == first.skipped
    )
    other = prepare(
        "coco", tmp_path / "out", source=[tmp_path / "src"], workers=1, image_size=32, shard_size=10
    )
    assert other.resumed_shards == 0 and other.splits == first.splits
    assert sorted(p.name for p in (dataset / "train").iterdir()) == ["000000.tar"]  # stale shards removed
    assert sorted(p.name for p in (dataset / ".shards" / "train").iterdir()) == ["000000.json"]
    check_manifest(dataset)
    bigger = prepare(
        "coco", tmp_path / "out", source=[tmp_path / "src"], workers=1, image_size=48, shard_size=10
    )
    assert bigger.resumed_shards == 0  # other image size: other bytes


def test_refuses_a_folder_that_is_not_its_own(tmp_path: Path) -> None:
    make_coco(tmp_path / "src")
    (tmp_path / "out" / "coco").mkdir(parents=True)
    (tmp_path / "out" / "coco" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not a 'coco' data set"):
        prepare("coco", tmp_path / "out", source=[tmp_path / "src"], workers=1)
