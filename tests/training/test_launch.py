"""How a recipe's topology becomes torchrun commands: one node, SLURM, NODE_RANK/MASTER_ADDR, by hand."""

from __future__ import annotations

import sys

import pytest

from scl_cli.config import load_recipe
from scl_cli.config.recipe import TopologyConfig
from scl_cli.engines.pretrain import pretrain
from scl_cli.errors import UsageError
from scl_cli.training import launch

from ..conftest import RECIPES, tiny_overrides

ARGS = ["pretrain", "recipes/base.toml", "--set=optim.lr=1e-4", "--resume"]


def test_first_host_of_slurm_node_lists():
    assert launch.first_host("gpu[07-09,12],cpu1") == "gpu07"
    assert launch.first_host("node-[1-4]") == "node-1"
    assert launch.first_host("a100x[3,5]-ib") == "a100x3-ib"
    assert launch.first_host("solo") == "solo"
    assert launch.first_host("n1,n2") == "n1"


def test_launch_only_outside_torchrun_and_for_several_processes():
    eight = TopologyConfig(devices_per_node=8)
    assert launch.needs_launch(eight, {})
    assert not launch.needs_launch(eight, {"WORLD_SIZE": "8", "RANK": "3"})
    assert not launch.needs_launch(TopologyConfig(), {})


def test_one_node_is_standalone_torchrun_with_the_same_arguments():
    plan = launch.plan_launch(TopologyConfig(devices_per_node=4), {})
    cmd = launch.torchrun_command(plan, ARGS)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:8] == ["--standalone", "--nnodes", "1", "--nproc-per-node", "4"]
    # torchrun leaves SIGTERM to the ranks (training.preemption) where it can be told to
    assert cmd[8:] == [*launch._signal_args(), "-m", "scl_cli.cli", *ARGS]
    assert launch._signal_args() == ["--signals-to-handle", "SIGINT,SIGHUP,SIGQUIT"]


def test_slurm_gives_node_rank_master_and_a_job_port():
    env = {"SLURM_JOB_ID": "4711", "SLURM_NNODES": "4", "SLURM_NODEID": "2",
           "SLURM_JOB_NODELIST": "gpu[10-13]"}  # fmt: skip
    plan = launch.plan_launch(TopologyConfig(nodes=4, devices_per_node=8), env)
    assert (plan.nnodes, plan.node_rank, plan.master_addr, plan.source) == (4, 2, "gpu10", "slurm")
    assert plan.master_port == 20000 + 4711
    args = plan.torchrun_args()
    assert args == ["--nnodes", "4", "--nproc-per-node", "8", "--node-rank", "2",
                    "--master-addr", "gpu10", "--master-port", "24711", "--rdzv-conf", "timeout=600"]  # fmt: skip
    with pytest.raises(UsageError, match="topology.nodes is 2 but this SLURM job has 4 nodes"):
        launch.plan_launch(TopologyConfig(nodes=2, devices_per_node=8), env)


def test_node_rank_and_master_from_the_environment_or_commands_to_print():
    topo = TopologyConfig(nodes=2, devices_per_node=8)
    plan = launch.plan_launch(topo, {"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"})
    assert (plan.node_rank, plan.master_addr, plan.master_port) == (1, "10.0.0.1", 1234)
    unknown = launch.plan_launch(topo, {})
    assert unknown.node_rank is None
    commands = launch.per_node_commands(unknown, ARGS)
    assert len(commands) == 2
    assert "--node-rank 0 --master-addr MASTER_HOST --master-port 29500" in commands[0]
    assert "--node-rank 1" in commands[1] and commands[1].endswith("--set=optim.lr=1e-4 --resume")


def test_slurm_tasks_one_per_device_join_directly():
    topo = TopologyConfig(nodes=2, devices_per_node=4)
    env = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "n[1-2]",
           "SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}  # fmt: skip
    assert launch.adopt_slurm_tasks(topo, env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("5", "8", "1", "n1")
    assert not launch.needs_launch(topo, env)
    # a batch script (no job step) or one task per node: torchrun does the spawning
    assert not launch.adopt_slurm_tasks(topo, {"SLURM_JOB_ID": "7", "SLURM_NNODES": "2"})
    assert not launch.adopt_slurm_tasks(topo, {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0"})


def test_multi_node_without_a_master_reports_each_nodes_command(shapes_root, tmp_path, monkeypatch):
    for name in ("NODE_RANK", "MASTER_ADDR", "SLURM_JOB_ID", "WORLD_SIZE", "RANK", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    sets = tiny_overrides(shapes_root, tmp_path / "run", **{"topology.nodes": 2, "topology.device": '"cpu"'})
    recipe = load_recipe(RECIPES / "tiny.toml", sets[1::2])

    class Collect:
        lines: list[str] = []

        def info(self, msg):
            self.lines.append(msg)

    reporter = Collect()
    result = pretrain(recipe, reporter=reporter, launch_args=["pretrain", "R.toml"])
    assert result.steps == 0 and not (tmp_path / "run" / "checkpoints").exists()
    assert reporter.lines[1].startswith("node 0: ") and "--node-rank 0" in reporter.lines[1]
    assert reporter.lines[2].startswith("node 1: ") and reporter.lines[2].endswith(
        "-m scl_cli.cli pretrain R.toml"
    )
