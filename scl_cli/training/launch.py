"""Start a multi-process run from the recipe's topology with the standard tool, torchrun.

`scl pretrain R` with `topology.nodes * topology.devices_per_node > 1`, started outside torchrun:

- one node: runs `python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node P
  -m scl_cli.cli pretrain <the same arguments>` and waits for it;
- several nodes under SLURM (`SLURM_JOB_ID`, `SLURM_NNODES`, `SLURM_NODEID`,
  `SLURM_JOB_NODELIST`; one `scl pretrain` per node: `srun --ntasks-per-node=1 scl pretrain R`):
  this node's part, `--nnodes N --node-rank $SLURM_NODEID --master-addr <first host of the
  node list> --master-port <MASTER_PORT or one derived from the job id>`;
- SLURM with one task per device (`srun --ntasks-per-node=P`): no torchrun; each task joins the
  process group directly as rank `SLURM_PROCID` (see `adopt_slurm_tasks`);
- several nodes elsewhere: with `NODE_RANK` and `MASTER_ADDR` set (and optionally `MASTER_PORT`),
  this node's part; without them, the exact command for every node, to run by hand.

Inside torchrun (`WORLD_SIZE` set) nothing is launched: `setup_runtime` joins the group.

Several nodes: torchrun's static rendezvous on node 0's `MASTER_ADDR:MASTER_PORT` waits
`topology.rendezvous_timeout` seconds for every node; once running, a lost node makes the other
ranks' next collective fail (at once when its connections close, after `topology.collective_timeout`
when they just go silent), and each of them stops with one line saying so (`training.run`).

SIGTERM (preemption): torchrun is started with SIGTERM ignored (and told not to handle it), so a
SIGTERM to this launcher or to the whole job reaches the ranks alone: this launcher writes `stop`
in the node's control folder (`SCL_CONTROL_DIR`, `training.preemption`), every rank finishes its
step, the run writes one checkpoint, the ranks and torchrun exit 0, and so does this launcher.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from scl_cli.config import Recipe, recipe_to_toml
from scl_cli.config.recipe import TopologyConfig
from scl_cli.data.manifests import check_train_data
from scl_cli.errors import SclError, UsageError
from scl_cli.io.atomic import atomic_write_text
from scl_cli.reporting import Reporter
from scl_cli.training.preemption import CONTROL_ENV, STOP_FILE
from scl_cli.training.run import result_from_run
from scl_cli.training.trainer import TrainResult

DEFAULT_PORT = 29500
LAUNCHED_ENV = "SCL_LAUNCHED"  # set for the processes `run_torchrun` starts


class LaunchError(SclError):
    """torchrun ended with an error; the ranks' own messages are above it."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class LaunchPlan:
    """How torchrun is started on this node (`node_rank` None: print every node's command)."""

    nnodes: int
    nproc_per_node: int
    node_rank: int | None = 0
    master_addr: str | None = None
    master_port: int = DEFAULT_PORT
    source: str = "recipe"  # "recipe" | "env" | "slurm": where the node rank and master came from
    rendezvous_timeout: int | None = None  # seconds node 0 waits for the others (torchrun's default: 600)

    def torchrun_args(self, node_rank: int | None = None) -> list[str]:
        """torchrun's own arguments for `node_rank` (default: this node's)."""
        args = ["--nnodes", str(self.nnodes), "--nproc-per-node", str(self.nproc_per_node)]
        if self.nnodes == 1:
            return ["--standalone", *args]
        rank = self.node_rank if node_rank is None else node_rank
        timeout = ["--rdzv-conf", f"timeout={self.rendezvous_timeout}"] if self.rendezvous_timeout else []
        return [
            *args,
            "--node-rank", str(rank),
            "--master-addr", self.master_addr or "MASTER_HOST",
            "--master-port", str(self.master_port),
            *timeout,
        ]  # fmt: skip


def inside_torchrun(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return "WORLD_SIZE" in env and "RANK" in env


def needs_launch(topology: TopologyConfig, env: Mapping[str, str] | None = None) -> bool:
    """True when the topology asks for several processes and this is not one of them."""
    return topology.world_size > 1 and not inside_torchrun(env)


def check_world(topology: TopologyConfig, command: str, env: Mapping[str, str] | None = None) -> None:
    """Stop before anything starts when this run has another number of processes than the recipe's
    topology (e.g. `torchrun --nproc-per-node 4` on an 8-device recipe): each step would train on
    a different global batch than the recipe's `optim.batch_size`, with `max_steps` and the
    learning rate schedule computed for the recipe's. Rank 0 says so in one line (`UsageError`);
    the other ranks exit with the same code, silently."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world == topology.world_size:
        return
    if int(env.get("RANK", "0")) != 0:
        raise SystemExit(UsageError.exit_code)
    nodes = int(env.get("NNODES", env.get("SLURM_NNODES", "1")) or 1)
    per_node = max(world // max(nodes, 1), 1)
    raise UsageError(
        f"this run has {world} process(es) but the recipe's topology asks for {topology.world_size} "
        f"(nodes {topology.nodes} x devices_per_node {topology.devices_per_node}): start it with plain "
        f"`scl {command}` (it launches torchrun itself), or --set topology.nodes={nodes} "
        f"--set topology.devices_per_node={per_node}"
    )


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[07-09,12],cpu1` -> `gpu07`."""
    entry = re.split(r",(?![^\[]*\])", nodelist.strip())[0]
    found = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", entry)
    if found is None:
        return entry
    prefix, ranges, suffix = found.groups()
    return prefix + ranges.split(",")[0].split("-")[0] + suffix


def plan_launch(topology: TopologyConfig, env: Mapping[str, str] | None = None) -> LaunchPlan:
    """Where this node sits in the run: from SLURM, from NODE_RANK/MASTER_ADDR, or unknown."""
    env = os.environ if env is None else env
    plan = _plan(topology, env)
    if plan.nnodes > 1:
        plan = dataclasses.replace(plan, rendezvous_timeout=int(topology.rendezvous_timeout))
    return plan


def _plan(topology: TopologyConfig, env: Mapping[str, str]) -> LaunchPlan:
    nodes, per_node = topology.nodes, topology.devices_per_node
    port = int(env.get("MASTER_PORT", DEFAULT_PORT))
    if nodes == 1:
        return LaunchPlan(1, per_node, 0, "127.0.0.1", port)
    if "SLURM_JOB_ID" in env and "SLURM_NNODES" in env:
        slurm_nodes = int(env["SLURM_NNODES"])
        if slurm_nodes != nodes:
            raise UsageError(
                f"topology.nodes is {nodes} but this SLURM job has {slurm_nodes} nodes (SLURM_NNODES); "
                f"use --set topology.nodes={slurm_nodes} or allocate {nodes} nodes"
            )
        if "MASTER_PORT" not in env:  # jobs sharing a node must not share a port
            port = 20000 + int(re.sub(r"\D", "", env["SLURM_JOB_ID"]) or 0) % 20000
        master = env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "localhost"))
        return LaunchPlan(nodes, per_node, int(env.get("SLURM_NODEID", 0)), master, port, "slurm")
    if "NODE_RANK" in env and "MASTER_ADDR" in env:
        return LaunchPlan(nodes, per_node, int(env["NODE_RANK"]), env["MASTER_ADDR"], port, "env")
    return LaunchPlan(nodes, per_node, None, env.get("MASTER_ADDR"), port)


def torchrun_command(
    plan: LaunchPlan, cli_args: list[str], node_rank: int | None = None, by_launcher: bool = True
) -> list[str]:
    """`python -m torch.distributed.run <torchrun args> -m scl_cli.cli <cli_args>`; `by_launcher`:
    started by `run_torchrun` (SIGTERM ignored), so torchrun is told to leave SIGTERM alone."""
    signals = _signal_args() if by_launcher else []
    return [
        sys.executable, "-m", "torch.distributed.run", *plan.torchrun_args(node_rank), *signals,
        "-m", "scl_cli.cli", *cli_args,
    ]  # fmt: skip


def _signal_args() -> list[str]:
    """torchrun handles SIGTERM by killing its workers after a grace period; ours handle it
    themselves (`training.preemption`), so torchrun is asked to leave it alone where it can be."""
    try:
        from torch.distributed.run import get_args_parser

        if "--signals-to-handle" in get_args_parser()._option_string_actions:
            return ["--signals-to-handle", "SIGINT,SIGHUP,SIGQUIT"]
    except (ImportError, AttributeError):
        pass
    return []


def per_node_commands(plan: LaunchPlan, cli_args: list[str]) -> list[str]:
    """The shell command to start on each node, node 0 first (it hosts the rendezvous)."""
    return [
        shlex.join(torchrun_command(plan, cli_args, rank, by_launcher=False)) for rank in range(plan.nnodes)
    ]


@dataclass
class TorchrunOutcome:
    code: int
    stop_requested: bool  # this launcher got SIGTERM and passed it on
    stopped_ranks: int  # ranks of this node that stopped cleanly with a checkpoint after it


def _ignore_sigterm() -> None:  # in the torchrun child, before exec (SIG_IGN survives exec)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_torchrun(command: list[str], control: Path | None = None) -> TorchrunOutcome:
    """Run torchrun in the foreground and wait. SIGTERM to this process writes `stop` in the
    node's `control` folder: every rank finishes its step and the run writes a checkpoint
    (`training.preemption`); torchrun itself ignores SIGTERM. Ctrl-C reaches torchrun directly
    through the terminal's process group. Raises `LaunchError` when torchrun fails, unless the
    ranks of this node stopped cleanly after a SIGTERM (each left `stopped-RANK` in `control`)."""
    own = control is None
    control = Path(tempfile.mkdtemp(prefix="scl-node-")) if control is None else control
    env = {**os.environ, LAUNCHED_ENV: "1", CONTROL_ENV: str(control)}
    proc = subprocess.Popen(command, env=env, preexec_fn=_ignore_sigterm)
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()
        atomic_write_text(control / STOP_FILE, "SIGTERM\n")

    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers live there only
        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, on_term),
            signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        }
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    outcome = TorchrunOutcome(code, stop.is_set(), len(list(control.glob("stopped-*"))))
    if own:
        shutil.rmtree(control, ignore_errors=True)
    if code != 0 and not (outcome.stop_requested and outcome.stopped_ranks):
        raise LaunchError(
            f"torchrun ended with exit code {code} (the ranks' messages are above)",
            exit_code=code if 0 < code < 128 else 1,
        )
    return outcome


def adopt_slurm_tasks(topology: TopologyConfig, env: dict[str, str] | None = None) -> bool:
    """Under `srun` with one task per device (the job step's SLURM_STEP_NUM_TASKS = the topology's
    world size; a batch script itself is no job step), turn
    SLURM's task variables into torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT) so each task joins the process group itself. Returns True if it did."""
    env = os.environ if env is None else env
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if inside_torchrun(env) or topology.world_size == 1 or tasks != topology.world_size:
        return False
    plan = plan_launch(topology, env)
    env.update({
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": str(tasks),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(topology.devices_per_node),
        "MASTER_ADDR": plan.master_addr or "127.0.0.1",
        "MASTER_PORT": str(plan.master_port),
    })  # fmt: skip
    return True


def is_main_process(env: Mapping[str, str] | None = None) -> bool:
    """Rank 0, or not a distributed process at all: the one process that reports."""
    env = os.environ if env is None else env
    return int(env.get("RANK", "0")) == 0


def launched_by_scl(env: Mapping[str, str] | None = None) -> bool:
    """True in the processes `scl` started through torchrun (their launcher sums the run up)."""
    env = os.environ if env is None else env
    return env.get(LAUNCHED_ENV) == "1" and inside_torchrun(env)


def launch_run(
    recipe: Recipe,
    command: str,
    resume: bool,
    reporter: Reporter,
    launch_args: list[str] | None,
    datasets: list[str] | None = None,
    split: str | None = None,
    extra_args: list[str] | None = None,
    group: str = "splits",
) -> TrainResult:
    """Start this node's part of a `scl COMMAND` run (pretrain, finetune) under torchrun, or print
    every node's command. `launch_args`: the `scl` arguments each process gets (None: the resolved
    recipe is written to OUTPUT/launch-recipe.toml and passed, with `extra_args`)."""
    topo, data = recipe.topology, recipe.data
    # Caught here once, before any process starts, rather than by every rank.
    check_train_data(
        data.root, datasets or data.train, split or data.split, topo.world_size, data.num_workers, group
    )
    run_dir = Path(recipe.output.dir)
    plan = plan_launch(topo)
    control = Path(tempfile.mkdtemp(prefix="scl-node-"))
    try:
        if launch_args is None:
            # Rank 0's node writes into output.dir; the others keep their copy to themselves.
            folder = run_dir if plan.node_rank in (0, None) else control
            folder.mkdir(parents=True, exist_ok=True)
            resolved = atomic_write_text(folder / "launch-recipe.toml", recipe_to_toml(recipe))
            launch_args = [
                command,
                str(resolved),
                *(extra_args or []),
                *(["--resume"] if resume else []),
                "--plain",
            ]
        return _launch(plan, topo, launch_args, run_dir, control, reporter)
    finally:
        shutil.rmtree(control, ignore_errors=True)


def _launch(plan: LaunchPlan, topo: TopologyConfig, launch_args: list[str], run_dir: Path, control: Path,
            reporter: Reporter) -> TrainResult:  # fmt: skip
    if plan.node_rank is None:
        commands = per_node_commands(plan, launch_args)
        reporter.info(
            f"topology asks for {topo.nodes} nodes x {topo.devices_per_node} devices: start on each node "
            "(node 0 first; replace MASTER_HOST by node 0's address, or set NODE_RANK and MASTER_ADDR "
            "and run the same scl command on every node):"
        )
        for rank, command in enumerate(commands):
            reporter.info(f"node {rank}: {command}")
        return TrainResult(run_dir, 0)
    where = f"node {plan.node_rank} of {plan.nnodes}, " if plan.nnodes > 1 else ""
    reporter.info(
        f"launching torchrun: {where}{plan.nproc_per_node} process(es) per node ({topo.strategy}, "
        f"device {topo.device})"
    )
    try:
        outcome = run_torchrun(torchrun_command(plan, launch_args), control)
    except LaunchError as err:
        if plan.nnodes > 1:
            raise LaunchError(
                f"torchrun on node {plan.node_rank} of {plan.nnodes} ended with exit code {err.exit_code}: a rank "
                "failed or another node stopped (the ranks' messages are above); start every node again "
                "with --resume", err.exit_code,
            ) from None  # fmt: skip
        raise
    stopped = outcome.stop_requested or outcome.stopped_ranks > 0  # SIGTERM here, or to the ranks directly
    if plan.node_rank != 0:
        reporter.info(
            f"node {plan.node_rank} of {plan.nnodes}: done (node 0 writes the checkpoints and metrics)"
        )
        return TrainResult(run_dir, 0, stopped_by_signal=stopped)
    result = result_from_run(run_dir)
    result.stopped_by_signal = stopped
    return result
