"""The launcher group: bad settings refused before anything runs, and the agents' commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.config import ConfigError
from engine.launch import LaunchResult
from tests.helpers import cli, tiny_config
from tuner.config import load
from tuner.feasibility import Infeasible, runnable
from tuner.slurm import failed_by_itself, node_script, slurm_cause, srun_command
from tuner.torchrun import agent_command, node_argv


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["launcher=kubernetes"], ["kubernetes", "torchrun"]),
        (["launcher=torchrun", "launcher.nnodes=0"], ["launcher.nnodes", "0"]),
        (["launcher.nnodes=2"], ["launcher.nnodes", "no effect", "launcher=local"]),
        (["launcher.node_command='ssh {host}'"], ["launcher.node_command", "launcher=local"]),
        (["launcher=torchrun", "launcher.rdzv_endpoint=node1"], ["rdzv_endpoint", "HOST:PORT"]),
        (["launcher=torchrun", "launcher.rdzv_endpoint=node1:70000"], ["65535", "node1:70000"]),
        (
            ["launcher=torchrun", "launcher.nnodes=3", "launcher.node_command='ssh {host}'"],
            ["launcher.hosts", "2 for launcher.nnodes=3"],
        ),
        (["launcher=torchrun", "launcher.node_command='ssh {hots}'"], ["{host}", "{hots}"]),
        (["launcher=torchrun", "launcher.node_command='ssh {'"], ["cannot be read"]),
        (["launcher=torchrun", "launcher.hosts=[n2]"], ["launcher.hosts", "no effect"]),
        (
            ["launcher=slurm", "launcher.node_command='ssh {host}'"],
            ["launcher.node_command", "no effect", "launcher=torchrun"],
        ),
        (["launcher=slurm", "launcher.srun_args=[gpu]"], ["launcher.srun_args", "srun option"]),
        (["launcher=torchrun", "launcher.hosts=['a b']"], ["launcher.hosts", "a b"]),
        (
            [
                "launcher=torchrun",
                "launcher.node_command='ssh {host}'",
                "launcher.hosts=[n2]",
                "launcher.nnodes=2",
                "sweep.out_dir='/tmp/my reports'",
            ],
            ["sweep.out_dir", "remote shell"],
        ),
    ],
)
def test_bad_launcher_settings_are_refused_naming_the_key(overrides, words):
    with pytest.raises(ConfigError) as err:
        load(overrides)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_layouts_that_do_not_spread_over_the_nodes_are_pruned():
    launcher = load(["launcher=torchrun", "launcher.nnodes=2"]).launcher
    with pytest.raises(Infeasible, match=r"spread evenly over launcher\.nnodes=2"):
        runnable(tiny_config(parallel={"dp": 3}, train={"global_batch": 12}), launcher)
    fixed = load(["launcher=torchrun", "launcher.nnodes=2", "launcher.nproc_per_node=2"]).launcher
    with pytest.raises(Infeasible, match=r"launcher\.nproc_per_node = 2 \* 2 = 4"):
        runnable(tiny_config(parallel={"dp": 2}), fixed)
    four = tiny_config(parallel={"dp": 4}, train={"micro_batch": 2})
    assert runnable(four, fixed).parallel.dp == 4


def test_a_layout_the_nodes_cannot_hold_stops_run_before_launch(tmp_path):
    layout = ["parallel.dp=3", "train.micro_batch=1", "train.global_batch=3"]
    proc = cli("run", "launcher=torchrun", "launcher.nnodes=2", *layout, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "spread evenly" in proc.stderr
    assert not (tmp_path / "reports").exists()  # nothing was launched


CONFIG = "/shared/trial/config.json"


def _agents(*overrides: str) -> tuple[list[str], list[str]]:
    launcher = load(["launcher=torchrun", *overrides]).launcher
    argv = {}
    for node in (0, 1):
        agent = agent_command(
            launcher,
            node=node,
            nproc=1,
            endpoint=(launcher.rdzv_endpoint or "127.0.0.1:29500").rsplit(":", 1),
            run_id="trial",
            config_path=CONFIG,
            log_dir="/shared/trial",
        )
        argv[node] = agent if node == 0 else node_argv(launcher, node, agent, {"PYTHONPATH": "/p"})
    return argv[0], argv[1]


def test_node_zero_hosts_the_rendezvous_and_other_nodes_join_through_the_node_command():
    first, second = _agents(
        "launcher.nnodes=2",
        "launcher.rdzv_endpoint=node1:29400",
        "launcher.node_command='ssh -tt {host}'",
        "launcher.hosts=[node2]",
    )
    assert second[:5] == ["ssh", "-tt", "node2", "env", "PYTHONPATH=/p"]
    for node, argv in enumerate((first, second)):
        assert "--nnodes=2" in argv and "--rdzv-endpoint=node1:29400" in argv
        assert "--max-restarts=0" in argv and not any("--local-addr" in a for a in argv)
        worker = argv[argv.index("engine.torchrun_rank") + 1 :]
        assert worker == [str(node), "/shared/trial", sys.executable, "-m", "engine", CONFIG]
    assert any(a.startswith("--rdzv-conf=is_host=1") for a in first)
    assert any(a.startswith("--rdzv-conf=is_host=0") for a in second)
    # in an allocation, srun places node i's agent on the allocation's i-th node
    _, srun = _agents("launcher.nnodes=2", "launcher.node_command='srun -N1 -n1 -r {node}'")
    assert srun[:5] == ["srun", "-N1", "-n1", "-r", "1"]
    # loopback "nodes" on this machine: no prefix, and the workers' store on 127.0.0.1
    _, local = _agents("launcher.nnodes=2")
    assert local[1:3] == ["-m", "torch.distributed.run"] and "--local-addr=127.0.0.1" in local


def test_each_slurm_node_runs_one_agent_that_joins_the_steps_first_node(tmp_path):
    overrides = ["launcher=slurm", "launcher.nnodes=2", 'launcher.srun_args=["--partition=gpu"]']
    launcher = load(overrides).launcher
    script = node_script(launcher, nproc=4, log_dir=tmp_path, config_path=tmp_path / "c.json")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    for part in ("--rdzv-endpoint=$head:$port", "--nproc-per-node=4", "is_host=$((node == 0))"):
        assert part in script
    assert script.rstrip().endswith(
        f"-m engine.torchrun_rank $node {tmp_path} {sys.executable} -m engine {tmp_path}/c.json"
    )
    argv = srun_command(launcher, script=tmp_path / "node.sh", log_dir=tmp_path)
    assert argv[0] == "srun" and {"--nodes=2", "--ntasks=2", "--ntasks-per-node=1"} <= set(argv)
    assert argv[-3:] == ["--partition=gpu", "bash", str(tmp_path / "node.sh")]  # the user's last


def _ranks(codes, times):
    return LaunchResult(codes, False, 1.0, [], exit_s=times)


@pytest.mark.parametrize(
    ("codes", "times", "reason"),
    [
        # scancel: slurmstepd's SIGTERM reached a rank before its wrapper noticed the agent's end
        ([None, -15], [None, 2.0], "crash"),
        ([-9, -15], [2.1, 2.0], "crash"),
        ([None, None], [None, None], "crash"),
        # a rank that failed by itself is the cause; the step's cancellation followed from it
        ([1, -15], [1.0, 2.0], None),
    ],
)
def test_a_cancelled_step_is_slurms_doing_unless_a_rank_failed_by_itself_first(
    tmp_path, codes, times, reason
):
    (tmp_path / "agent0.log").write_text(
        "step output\nslurmstepd: error: *** STEP 7.0 ON n1 CANCELLED AT 2026-11-29T19:03:11 ***\n"
    )
    ranks = _ranks(codes, times)
    cause = slurm_cause(tmp_path, rank_failed=failed_by_itself(ranks))
    if reason is None:
        assert cause is None
    else:
        assert cause.reason == reason and "Slurm:" in cause.detail and "CANCELLED" in cause.detail
