"""`scl pretrain` with two processes, launched by scl itself through torchrun (CPU, gloo): rank 0
writes, a run killed after a checkpoint and resumed ends on the uninterrupted run's weights; two
"nodes" on this machine (two launches with NODE_RANK / MASTER_ADDR) train exactly what one node
with two processes does; killing one node (started with SLURM's variables) stops the other with
one line; SIGTERM makes every rank stop after one checkpoint, exit 0, and resume exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from safetensors.torch import load_file

from scl_cli.config import load_recipe
from scl_cli.engines.pretrain import pretrain
from scl_cli.errors import DataError
from scl_cli.io.checkpoints import list_checkpoints
from scl_cli.training import launch

from .conftest import RECIPES, ROOT, free_port, run_scl, tiny_overrides

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not dist.is_available(), reason="gloo test runs on Linux"
)
STEPS = 6
TWO_CPU_PROCESSES = {"topology.devices_per_node": 2, "topology.device": '"cpu"', "data.num_workers": 0}


def _weights(run: Path) -> dict:
    return load_file(str(list_checkpoints(run)[-1] / "model.safetensors"))


def _worst(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`scl ARGS` in a session of its own (the launcher and torchrun; the ranks die with torchrun)."""
    return subprocess.Popen(
        [sys.executable, "-m", "scl_cli.cli", *args], cwd=ROOT, env={**os.environ, "CI": "1", **(env or {})},
        stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True,
    )  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen, lines: int = 0) -> None:
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if path.exists() and (not lines or len(path.read_text().splitlines()) >= lines):
            return
        time.sleep(0.01)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc): what a scheduler signals when it stops a job."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _terminate_all(pid: int) -> None:
    """SIGTERM to `pid` and all its descendants (launcher, torchrun, ranks, loader workers)."""
    for target in [pid, *_descendants(pid)]:
        try:
            os.kill(target, signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def straight(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted one-node, two-process run every other run here is compared with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    proc = run_scl(
        "pretrain",
        str(RECIPES / "tiny.toml"),
        *tiny_overrides(shapes_root, run, steps=STEPS, **TWO_CPU_PROCESSES),
    )
    assert proc.returncode == 0, proc.stderr
    assert "launching torchrun" in proc.stderr and "finished step 6" in proc.stderr
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))  # rank 0 alone writes metrics
    assert [p.name for p in list_checkpoints(run)] == ["step-4", "step-6"]  # keep_last 2
    return run


def test_two_processes_resume_exactly_after_a_kill(shapes_root: Path, straight: Path, tmp_path: Path) -> None:
    args = ["pretrain", str(RECIPES / "tiny.toml")]
    killed = tmp_path / "killed"
    sets = tiny_overrides(shapes_root, killed, steps=STEPS, **TWO_CPU_PROCESSES)
    runner = subprocess.Popen(
        [sys.executable, "-m", "scl_cli.cli", *args, *sets],
        cwd=ROOT,
        env={**os.environ, "CI": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while (
        not (killed / "checkpoints" / "step-2").exists() and runner.poll() is None and time.time() < deadline
    ):
        time.sleep(0.01)
    # The launcher and torchrun; the ranks (in sessions of their own) die with torchrun.
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    time.sleep(2)
    done = list_checkpoints(killed)
    assert done and int(done[-1].name.split("-")[1]) < STEPS, "the run finished before it could be killed"

    resumed = run_scl(*args, *sets, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    worst = _worst(straight, killed)
    assert worst < 1e-5, worst


def test_two_nodes_train_what_one_node_with_two_processes_does(
    shapes_root: Path, straight: Path, tmp_path: Path
) -> None:
    port = str(free_port())
    runs = [tmp_path / f"node{rank}" for rank in (0, 1)]
    nodes = []
    for rank, run in enumerate(runs):
        sets = tiny_overrides(shapes_root, run, steps=STEPS, **{**TWO_CPU_PROCESSES, "topology.nodes": 2,
                                                                "topology.devices_per_node": 1})  # fmt: skip
        env = {
            "NODE_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "OMP_NUM_THREADS": "1",
        }
        nodes.append(
            _start(["pretrain", str(RECIPES / "tiny.toml"), *sets], tmp_path / f"node{rank}.log", env)
        )
    codes = [node.wait(timeout=600) for node in nodes]
    logs = [(tmp_path / f"node{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [0, 0], logs
    assert "launching torchrun: node 0 of 2" in logs[0] and "finished step 6" in logs[0]
    assert "node 1 of 2: done" in logs[1]
    assert not runs[1].exists()  # node 1's rank (rank 1) writes nothing, its launcher neither
    assert [p.name for p in list_checkpoints(runs[0])] == ["step-4", "step-6"]
    assert _losses(runs[0]) == pytest.approx(_losses(straight), abs=1e-5)
    worst = _worst(straight, runs[0])
    print(
        f"two nodes vs one node with two processes: losses {_losses(runs[0])}, largest weight difference {worst:g}"
    )
    assert worst < 1e-5, worst


def test_killing_one_node_stops_the_other_with_one_line(shapes_root: Path, tmp_path: Path) -> None:
    port = str(free_port())
    runs = [tmp_path / f"node{rank}" for rank in (0, 1)]
    nodes = []
    for rank, run in enumerate(runs):
        sets = tiny_overrides(shapes_root, run, steps=40, **{**TWO_CPU_PROCESSES, "topology.nodes": 2,
                                                             "topology.devices_per_node": 1,
                                                             "topology.collective_timeout": 60})  # fmt: skip
        # one `scl pretrain` per node, as `srun --ntasks-per-node=1` starts them
        env = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_NODEID": str(rank),
               "SLURM_JOB_NODELIST": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}  # fmt: skip
        nodes.append(
            _start(["pretrain", str(RECIPES / "tiny.toml"), *sets], tmp_path / f"node{rank}.log", env)
        )
    _wait_for(runs[0] / "checkpoints" / "step-2", nodes[0])
    assert nodes[0].poll() is None, (tmp_path / "node0.log").read_text()
    os.killpg(nodes[1].pid, signal.SIGKILL)
    killed = time.time()
    code = nodes[0].wait(timeout=120)  # a hang fails here: bounded by the collective timeout (60 s)
    print(f"node 0 stopped {time.time() - killed:.1f} s after node 1 was killed")
    nodes[1].wait()
    log = (tmp_path / "node0.log").read_text()
    assert code == 1, log
    assert "launching torchrun: node 0 of 2" in log
    assert "error: rank 0 of 2: lost contact with the other processes of the run" in log
    assert "start every node again with --resume" in log
    assert "error: torchrun on node 0 of 2 ended with exit code 1" in log


def test_sigterm_stops_every_rank_with_one_checkpoint_and_resumes_exactly(
    shapes_root: Path, straight: Path, tmp_path: Path
) -> None:
    run = tmp_path / "preempted"
    args = [
        "pretrain",
        str(RECIPES / "tiny.toml"),
        *tiny_overrides(shapes_root, run, steps=STEPS, **TWO_CPU_PROCESSES),
    ]
    launcher = _start(args, tmp_path / "log")
    _wait_for(run / "metrics.jsonl", launcher, lines=1)
    # what SLURM does on preemption: SIGTERM to every process of the job (torchrun ignores it)
    _terminate_all(launcher.pid)
    code = launcher.wait(timeout=300)
    log = (tmp_path / "log").read_text()
    assert code == 0, log
    done = list_checkpoints(run)
    assert done and int(done[-1].name.split("-")[1]) < STEPS, "the run finished before SIGTERM reached it"
    step = int(done[-1].name.split("-")[1])
    assert f"warning: SIGTERM: stopped after step {step} of {STEPS} with checkpoint step-{step}" in log
    assert f"stopped by SIGTERM: checkpoint {done[-1]}; continue with the same command and --resume" in log
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()][-1] == step
    resumed = run_scl(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    worst = _worst(straight, run)
    assert worst < 1e-5, worst


def test_sigterm_to_every_process_of_a_one_process_run_with_loader_workers(
    shapes_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    sets = tiny_overrides(shapes_root, run, steps=40, **{"topology.device": '"cpu"', "data.num_workers": 2})
    proc = _start(["pretrain", str(RECIPES / "tiny.toml"), *sets], tmp_path / "log")
    _wait_for(run / "metrics.jsonl", proc, lines=1)
    _terminate_all(proc.pid)  # the loader workers too: they leave the stop to the training process
    code = proc.wait(timeout=300)
    log = (tmp_path / "log").read_text()
    assert code == 0, log
    done = list_checkpoints(run)
    assert done and int(done[-1].name.split("-")[1]) < 40 and "stopped by SIGTERM: checkpoint" in log


def test_too_few_shards_for_the_ranks_is_caught_before_launch(
    shapes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WORLD_SIZE", "RANK", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    launched = []
    monkeypatch.setattr(launch, "run_torchrun", launched.append)
    sets = tiny_overrides(shapes_root, tmp_path / "run", **{**TWO_CPU_PROCESSES, "data.num_workers": 4})
    recipe = load_recipe(RECIPES / "tiny.toml", sets[1::2])
    with pytest.raises(DataError, match=r"fewer than the 8 loader slots \(2 ranks x 4 workers\)"):
        pretrain(recipe, launch_args=["pretrain", "R.toml"])
    assert launched == []
