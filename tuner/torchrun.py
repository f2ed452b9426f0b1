"""One trial under torchrun: an agent per node, c10d rendezvous, per-rank evidence gathered.

The sweep starts node 0's agent here; it hosts the rendezvous store at ``launcher.rdzv_endpoint``
(127.0.0.1 and a free port by default, retried on a clash like the local launcher's port). The
agents of nodes 1, 2, ... start through ``launcher.node_command`` (``ssh {host}``, ``srun ...``),
or here when it is empty: loopback "nodes" that stand in for a cluster in tests. Each worker is
engine.torchrun_rank, which logs its rank to ``rank<i>.log`` and records how it ended; the ranks'
records make the same LaunchResult the local launcher returns, so tuner/failures.py judges both
alike. An agent that ended before any rank failed (killed, unreachable, rendezvous failed) is
the cause of its ranks' failures, and its node is named.

Nothing outlives the trial: every process started here dies with the sweep (engine.orphan_guard)
and is ended with its session at a timeout or failure; workers die with their agent
(engine.torchrun_rank); agents on other hosts lose the rendezvous store when node 0's agent ends.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from engine.launch import LOOPBACK, LaunchResult, _port_clash, _supervise, free_port
from engine.torchrun_rank import exit_record_path
from tuner.failures import Verdict, last_error_line
from tuner.launcher_checks import ranks_per_node
from tuner.schema import LauncherConfig

log = logging.getLogger(__name__)

# environment an agent on another host is given explicitly (ssh and srun pass little or all)
_FORWARDED = ("PYTHONPATH",)


@dataclass
class NodesLaunch:
    ranks: LaunchResult  # per rank, as the local launcher reports them
    agents: LaunchResult  # per node: the agents' exit codes, times and logs
    cause: Verdict | None  # an agent's failure that came before any rank's


def _endpoint(launcher: LauncherConfig) -> tuple[str, int]:
    if not launcher.rdzv_endpoint:
        return LOOPBACK, free_port()
    host, port = launcher.rdzv_endpoint.rsplit(":", 1)
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def torchrun_args(
    launcher: LauncherConfig, *, nproc: int, endpoint: str, run_id: str, is_host: str
) -> list[str]:
    """torchrun's options for one node's agent (``is_host``: "1" on the node that hosts the
    rendezvous store, "0" on the others)."""
    conf = f"is_host={is_host},join_timeout={max(1, int(launcher.timeout_s))}"
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={launcher.nnodes}",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={run_id}",
        f"--rdzv-conf={conf}",
        "--max-restarts=0",  # a trial is a measurement: a restarted run would time two runs
    ]


def worker_args(node: str, *, log_dir: Path, config_path: Path) -> list[str]:
    """What each agent runs per rank: the engine, under engine.torchrun_rank."""
    return [
        "-m",
        "engine.torchrun_rank",
        node,
        str(log_dir),
        sys.executable,
        "-m",
        "engine",
        str(config_path),
    ]


def agent_command(
    launcher: LauncherConfig,
    *,
    node: int,
    nproc: int,
    endpoint: tuple[str, int],
    run_id: str,
    config_path: Path,
    log_dir: Path,
) -> list[str]:
    """torchrun for node ``node``: node 0 hosts the rendezvous store, the others join it."""
    host, port = endpoint
    args = torchrun_args(
        launcher, nproc=nproc, endpoint=f"{host}:{port}", run_id=run_id, is_host=str(int(node == 0))
    )
    # loopback nodes: the workers' store and gloo talk over 127.0.0.1, not the host name
    local = [f"--local-addr={LOOPBACK}"] if _is_loopback(host) else []
    return [*args, *local, *worker_args(str(node), log_dir=log_dir, config_path=config_path)]


def node_argv(
    launcher: LauncherConfig, node: int, agent: list[str], env: dict[str, str]
) -> list[str]:
    """The command that runs ``agent`` on node ``node`` (> 0): ``launcher.node_command`` with
    its placeholders filled, then ``env VAR=... agent``; the agent itself when it is empty."""
    if not launcher.node_command:
        return agent
    host = launcher.hosts[node - 1] if launcher.hosts else ""
    prefix = shlex.split(launcher.node_command.format(host=host, node=node))
    pairs = [f"{k}={env[k]}" for k in (*_FORWARDED, "GLOO_SOCKET_IFNAME") if k in env]
    # ssh hands its arguments to the remote shell, srun runs them as they are: both read
    # the same argv only when no argument needs quoting (tuner/launcher_checks.py refuses
    # paths that would)
    return [*prefix, "env", *pairs, *agent]


def start_logged(argv: list[str], env: dict[str, str] | None, log_path: Path) -> subprocess.Popen:
    with log_path.open("w") as out:
        return subprocess.Popen(
            # engine.orphan_guard: the agent (or ssh, srun) dies with the sweep
            [sys.executable, "-m", "engine.orphan_guard", str(os.getpid()), *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def read_records(log_dir: Path, world: int, start_wall: float) -> LaunchResult:
    """The ranks' own exit records as a LaunchResult; a rank without one (killed with its
    agent) or stopped by its agent after another failed did not end by itself: None."""
    codes: list[int | None] = [None] * world
    times: list[float | None] = [None] * world
    pids = [-1] * world
    for rank in range(world):
        path = exit_record_path(log_dir, rank)
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        pids[rank] = record["pid"]
        if not record["stopped_by_agent"]:
            codes[rank] = record["returncode"]
            times[rank] = record["ended_at"] - start_wall
    paths = [log_dir / f"rank{r}.log" for r in range(world)]
    return LaunchResult(codes, False, 0.0, paths, exit_s=times, pids=pids)


def _agent_cause(ranks: LaunchResult, agents: LaunchResult) -> Verdict | None:
    """An agent that ended by itself, unsuccessfully, before the first rank failed."""
    first = ranks.first_failed
    rank_failed_at = ranks.exit_s[first] if first is not None else float("inf")
    failed = [
        (t, node)
        for node, (code, t) in enumerate(zip(agents.returncodes, agents.exit_s))
        if code not in (None, 0) and t is not None and t < rank_failed_at
    ]
    if not failed:
        return None
    node = min(failed)[1]
    code = agents.returncodes[node]
    how = f"exited with code {code}"
    if code is not None and code < 0:
        how = f"was killed by signal {-code}" + (" (SIGKILL)" if code == -9 else "")
    error = last_error_line(agents.log_paths[node])
    detail = f"node {node}'s torchrun agent {how}; its ranks ended with it"
    return Verdict("crash", f"{detail}: {error}" if error else detail)


def launch_nodes(
    config_path: Path, *, world: int, log_dir: Path, launcher: LauncherConfig, attempts: int = 3
) -> NodesLaunch:
    """Run one trial's ``world`` ranks over ``launcher.nnodes`` torchrun agents."""
    nproc = ranks_per_node(world, launcher)
    t0 = time.monotonic()
    for attempt in range(attempts):
        endpoint = _endpoint(launcher)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if _is_loopback(endpoint[0]):
            env["GLOO_SOCKET_IFNAME"] = "lo"  # as the local launcher: loopback talks to itself
        run_id = f"paratune-{uuid.uuid4().hex[:12]}"
        for stale in log_dir.glob("rank*.exit.json"):
            stale.unlink()
        started, start_wall = time.monotonic(), time.time()
        procs = []
        for node in range(launcher.nnodes):
            agent = agent_command(
                launcher,
                node=node,
                nproc=nproc,
                endpoint=endpoint,
                run_id=run_id,
                config_path=config_path,
                log_dir=log_dir,
            )
            argv = agent if node == 0 else node_argv(launcher, node, agent, env)
            path = log_dir / f"agent{node}.log"
            procs.append((start_logged(argv, env, path), path))
        codes, times, timed_out = _supervise(procs, launcher.timeout_s - (started - t0), started)
        paths = [path for _, path in procs]
        clash = not launcher.rdzv_endpoint and _port_clash(paths[:1])
        if timed_out or all(c == 0 for c in codes) or not clash:
            break
        log.warning("rendezvous port was taken; retrying (%d/%d)", attempt + 2, attempts)
    wall = time.monotonic() - t0
    agents = LaunchResult(
        codes, timed_out, wall, paths, exit_s=times, pids=[p.pid for p, _ in procs]
    )
    ranks = read_records(log_dir, world, start_wall)
    ranks.timed_out, ranks.wall_s = timed_out, wall
    return NodesLaunch(ranks, agents, None if timed_out else _agent_cause(ranks, agents))
