"""Shards behind a URL: training from a local HTTP server gives the weights of the same shards on
disk, survives a server that fails every Nth request (retries counted in metrics.jsonl), fills a
bounded cache shared by workers and processes, resumes exactly after a kill; a shard that stays
unreadable is skipped and counted; wrong URLs are one line; `prepare --out URL` uploads and
resumes. S3/GCS are not reachable here: fsspec's generic paths (`memory://`) stand for them."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scl_cli.config import load_recipe
from scl_cli.data.collate import ERROR_KEY
from scl_cli.data.manifests import load_sources
from scl_cli.data.sampling import SlotReader
from scl_cli.data.shard_cache import ShardCache, ShardReading
from scl_cli.engines.prepare import prepare
from scl_cli.engines.pretrain import pretrain
from scl_cli.errors import DataError
from scl_cli.io import remote
from scl_cli.io.checkpoints import list_checkpoints
from scl_cli.io.fingerprint import sha256_file

from ..conftest import RECIPES, ROOT, run_scl, tiny_overrides
from .shard_server import ShardServer

STEPS = 6
FAST = remote.RetryPolicy(retries=5, timeout=10, backoff=0.01)


def sets(root: Path | str, run: Path, **extra: object) -> list[str]:
    return tiny_overrides(root, run, steps=STEPS, **{"data.num_workers": 2, "topology.device": '"cpu"',
                                                    "output.keep_last": 5, "log.loggers": "[]", **extra})  # fmt: skip


def recipe(root: Path | str, run: Path, **extra: object):
    return load_recipe(RECIPES / "tiny.toml", sets(root, run, **extra)[1::2])


def weights(run: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step}" / "model.safetensors"))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def disk_run(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("disk") / "run"
    assert pretrain(recipe(shapes_root, run)).steps == STEPS
    return run


def test_http_shards_train_the_weights_of_the_same_shards_on_disk(shapes_root, disk_run, tmp_path):
    cache = tmp_path / "cache"
    shard_bytes = max(p.stat().st_size for p in (shapes_root / "shapes" / "train").glob("*.tar"))
    bound = 2.5 * shard_bytes / 1e9  # room for two of the four train shards: the cache must evict
    with ShardServer(shapes_root, fail_every=2) as server:
        run = tmp_path / "http"
        rec = recipe(server.url, run, **{"data.cache_dir": f'"{cache}"', "data.cache_size_gb": bound})
        assert pretrain(rec).steps == STEPS
        assert server.failures > 0
    a, b = weights(disk_run), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in metrics(run)] == [r["loss"] for r in metrics(disk_run)]
    # every failed shard request was retried and counted (manifest/tokenizer reads happen outside the loader)
    retries = metrics(run)[-1]["read_retries"]
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    print(
        f"HTTP (every 2nd shard request fails) vs disk: largest weight difference {worst:g}; "
        f"{server.failures} failed requests, read_retries {retries:g} in metrics.jsonl"
    )
    assert 0 < retries <= server.failures
    assert "samples_skipped" not in metrics(run)[-1]
    entries = sorted(cache.glob("*.tar"))
    assert entries and sum(p.stat().st_size for p in entries) <= bound * 1e9
    want = {
        s["sha256"]
        for s in json.loads((shapes_root / "shapes" / "manifest.json").read_text())["splits"]["train"][
            "shards"
        ]
    }
    assert all(p.stem in want and sha256_file(p) == p.stem for p in entries)


def test_http_run_killed_and_resumed_ends_on_the_disk_runs_weights(shapes_root, disk_run, tmp_path):
    run = tmp_path / "killed"
    with ShardServer(shapes_root) as server:
        args = ["pretrain", str(RECIPES / "tiny.toml"), *sets(server.url, run)]
        runner = subprocess.Popen([sys.executable, "-m", "scl_cli.cli", *args], cwd=ROOT, env={**os.environ, "CI": "1"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.time() + 300
        while (
            not (run / "checkpoints" / "step-2").exists() and runner.poll() is None and time.time() < deadline
        ):
            time.sleep(0.01)
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
        done = list_checkpoints(run)
        assert done and int(done[-1].name.split("-")[1]) < STEPS, "the run finished before it could be killed"
        resumed = run_scl(*args, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert server.counts["/shapes/manifest.json"] >= 2
    a, b = weights(disk_run), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_shard_that_stays_unreadable_is_skipped_and_counted(shapes_root, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(shapes_root / "shapes", served / "shapes")
    (source,) = load_sources(served, ["shapes"], "train")
    gone = source.shards[1].path
    Path(gone).unlink()
    with ShardServer(served) as server:
        (remote_source,) = load_sources(server.url, ["shapes"], "train")  # no request per shard
        reader = SlotReader(list(remote_source.shards), 0, 0, 0, 0, 4, ShardReading(FAST)).samples(0)
        samples = [s for s, _ in islice(reader, source.samples)]
    lost = [s for s in samples if ERROR_KEY in s]
    assert len(lost) == source.shards[1].samples
    assert {s[ERROR_KEY] for s in lost} == {"unreadable_shard"}
    assert all(s["__key__"].startswith("000001.tar#") for s in lost)


def _read_all(url: str, cache: Path, bound: int) -> None:
    remote.configure(FAST)
    (source,) = load_sources(url, ["shapes"], "train")
    reading = ShardReading(FAST, ShardCache(cache, bound))
    reader = SlotReader(list(source.shards), 0, 0, 0, 0, 4, reading).samples(0)
    assert not any(ERROR_KEY in s for s, _ in islice(reader, source.samples))


def test_the_cache_is_shared_by_processes_and_bounded(shapes_root, tmp_path):
    cache = tmp_path / "cache"
    shards = sorted((shapes_root / "shapes" / "train").glob("*.tar"))
    bound = sum(p.stat().st_size for p in shards[:2]) + 1000
    with ShardServer(shapes_root, cut_every=3) as server:
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_read_all, args=(server.url, cache, bound)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        entries = list(cache.glob("*.tar"))
        assert 1 <= len(entries) <= 2 and sum(p.stat().st_size for p in entries) <= bound
        assert all(sha256_file(p) == p.stem for p in entries)
        assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]
        # a cached shard is read from the cache: no request for it
        before = sum(server.counts.values())
        (source,) = load_sources(shapes_root, ["shapes"], "train")
        cached = next(s for s in source.shards if (cache / f"{s.sha256}.tar").exists())
        url = f"{server.url}/shapes/train/{Path(cached.path).name}"
        f, local = ShardReading(FAST, ShardCache(cache, bound)).open(url, cached.sha256)
        f.close()
        assert local and sum(server.counts.values()) == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrong_urls_and_missing_packages_are_one_line(shapes_root, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/data"
    proc = run_scl("pretrain", str(RECIPES / "tiny.toml"),
                   *tiny_overrides(url, tmp_path / "run", **{"data.read_retries": 1}))  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {url}/shapes/tokenizer.json: read failed after 1 retry: "
    )
    assert "Connection refused" in lines[0]
    with ShardServer(shapes_root) as server:
        with pytest.raises(
            DataError, match=rf"^{server.url}/elsewhere/shapes/manifest.json: read failed: HTTP 404"
        ):
            load_sources(f"{server.url}/elsewhere", ["shapes"], "train")
    if "s3fs" not in sys.modules:
        try:
            import s3fs  # noqa: F401
        except ImportError:
            with pytest.raises(DataError, match=r"^s3://bucket/data/shapes/manifest.json: .*scl-cli\[s3\]"):
                load_sources("s3://bucket/data", ["shapes"], "train")


def test_prepare_out_url_stages_uploads_and_resumes(shapes_root, tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    target = "memory://bucket/prepared"
    summary = prepare(
        "shapes", target, staging=tmp_path / "stage", images=20, workers=1, shard_size=4, clips=0
    )
    assert summary.location == f"{target}/shapes" and summary.uploaded[1] == 0
    local = sorted(p.relative_to(summary.path).as_posix() for p in summary.path.rglob("*") if p.is_file())
    assert sorted(f.split("/shapes/", 1)[1] for f in fs.find("/bucket/prepared")) == local
    # an interrupted upload: two shards and the manifest never arrived
    for name in ("train/000001.tar", "val/000000.tar", "manifest.json"):
        fs.rm_file(f"/bucket/prepared/shapes/{name}")
    again = prepare("shapes", target, staging=tmp_path / "stage", images=20, workers=1, shard_size=4, clips=0)
    assert again.uploaded == (3, len(local) - 3)
    # the uploaded data set reads as the staged one
    (here,) = load_sources(summary.path.parent, ["shapes"], "train")
    (there,) = load_sources(target, ["shapes"], "train")
    a = [s for s, _ in islice(SlotReader(list(here.shards), 0, 0, 0, 0, 4).samples(0), here.samples)]
    b = [
        s
        for s, _ in islice(
            SlotReader(list(there.shards), 0, 0, 0, 0, 4, ShardReading(FAST)).samples(0), here.samples
        )
    ]
    assert a == b
    fs.rm("/bucket/prepared", recursive=True)
