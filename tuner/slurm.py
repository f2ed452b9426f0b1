"""One trial as one Slurm job step: ``srun`` starts a torchrun agent on each node.

Why srun, not sbatch or submitit: srun is Slurm's own client, at the cluster's version, and
needs nothing installed beside it; it runs in the foreground, so the sweep sees the step end and
its exit status directly (no polling of the queue, no accounting database needed); it forwards
the sweep's SIGTERM at a timeout to the step, and the step ends when srun dies (the sweep's
kill -9 included, engine.orphan_guard). Run inside an allocation (``salloc``/``sbatch``) each
trial is a step of it; outside one, srun asks for an allocation per trial. submitit would add a
dependency that pickles Python callables and polls the queue, for nothing srun lacks here.

Each node runs ``node.sh`` (written into the trial's folder): the rendezvous is at the step's
first node, the recipe of PyTorch's Slurm examples (``scontrol show hostnames``); the ranks are
engine.torchrun_rank workers, so logs, exit records and verdicts are those of launcher=torchrun.
What Slurm itself reports in srun's output (its time limit, an OOM kill in the step's cgroup, a
failed node) is mapped onto the same failure taxonomy.
"""

from __future__ import annotations

import math
import re
import shlex
import signal
import time
from pathlib import Path

from engine.launch import LaunchResult, _supervise
from tuner.failures import Verdict
from tuner.launcher_checks import ranks_per_node
from tuner.schema import LauncherConfig
from tuner.torchrun import NodesLaunch, read_records, start_logged, torchrun_args, worker_args

# what Slurm's daemons print through srun when they, not the job, end a step
_SLURM_TIMEOUT = re.compile(r"DUE TO TIME LIMIT")
_SLURM_OOM = re.compile(r"oom[_-]kill event|Exceeded (job|step) memory limit|OUT_OF_MEMORY")
_SLURM_ENDED = re.compile(r"DUE TO (PREEMPTION|NODE FAILURE)|NODE_FAIL|CANCELLED")
_PLACEHOLDER = "@SLURM_NODE@"  # replaced by shell variables once the arguments are quoted
# a port per job step: concurrent steps of one job, and consecutive jobs on a node, differ
_NODE_SCRIPT = """\
#!/bin/bash
# One node's torchrun agent of a paratune trial (launcher=slurm); srun runs it on every node.
set -euo pipefail
nodes=($(scontrol show hostnames "$SLURM_STEP_NODELIST"))
head=${{nodes[0]}}
node=0
for i in "${{!nodes[@]}}"; do
  if [[ ${{nodes[$i]}} == "$SLURMD_NODENAME" ]]; then node=$i; fi
done
port=$((20000 + (SLURM_JOB_ID * 64 + SLURM_STEP_ID) % 40000))
exec {command}
"""


def node_script(launcher: LauncherConfig, *, nproc: int, log_dir: Path, config_path: Path) -> str:
    """The script srun runs once per node."""
    args = torchrun_args(
        launcher,
        nproc=nproc,
        endpoint=f"{_PLACEHOLDER}endpoint",
        run_id=f"{_PLACEHOLDER}run_id",
        is_host=f"{_PLACEHOLDER}is_host",
    )
    args += worker_args(f"{_PLACEHOLDER}node", log_dir=log_dir, config_path=config_path)
    command = shlex.join(args)
    for name, shell in (
        ("endpoint", "$head:$port"),
        ("run_id", "$SLURM_JOB_ID.$SLURM_STEP_ID"),
        ("is_host", "$((node == 0))"),
        ("node", "$node"),
    ):
        command = command.replace(f"{_PLACEHOLDER}{name}", shell)
    return _NODE_SCRIPT.format(command=command)


def srun_command(launcher: LauncherConfig, *, script: Path, log_dir: Path) -> list[str]:
    # Slurm's own limit backs up the sweep's (launcher.timeout_s), which ends the step first
    minutes = math.ceil(launcher.timeout_s / 60) + 1
    return [
        "srun",
        f"--job-name=paratune-{log_dir.name}",
        f"--nodes={launcher.nnodes}",
        f"--ntasks={launcher.nnodes}",  # one agent per node; it starts the node's ranks
        "--ntasks-per-node=1",
        f"--time={minutes}",
        "--kill-on-bad-exit=1",  # a node whose agent failed ends the step on every node
        f"--output={log_dir}/agent%n.log",
        *launcher.srun_args,
        "bash",
        str(script),
    ]


def _slurm_lines(log_dir: Path) -> list[str]:
    """What Slurm itself printed: srun's messages (srun.log) and slurmstepd's, which go to the
    step's output (the agents' logs)."""
    lines = []
    for path in [*sorted(log_dir.glob("agent*.log")), log_dir / "srun.log"]:
        if path.exists():
            text = path.read_text(errors="replace").splitlines()
            lines += [line for line in text if line.startswith(("srun:", "slurmstepd"))]
    return lines


def slurm_cause(log_dir: Path, *, rank_failed: bool) -> Verdict | None:
    """Slurm's own reason for ending the step, or None. Its time limit and OOM kills are
    causes whatever the ranks did; a cancelled step or a failed node is one only when no rank
    failed first (a failed rank's step is cancelled as well)."""
    lines = _slurm_lines(log_dir)
    checks = [(_SLURM_TIMEOUT, "timeout"), (_SLURM_OOM, "oom")]
    if not rank_failed:
        checks.append((_SLURM_ENDED, "crash"))
    for pattern, reason in checks:
        for line in lines:
            if pattern.search(line):
                return Verdict(reason, f"Slurm: {line.strip()[:300]}")
    return None


# how slurmstepd ends a step's processes when the step is cancelled: a rank that died of one
# of these was ended with the step, it did not fail by itself
_STEP_KILL_SIGNALS = {-signal.SIGTERM, -signal.SIGKILL, -signal.SIGINT}


def failed_by_itself(ranks: LaunchResult) -> bool:
    """Whether a rank failed of its own accord first: a rank whose first failure is a signal
    the step's end sends (scancel, a failed node) counts only once Slurm names no cause."""
    first = ranks.first_failed
    return first is not None and ranks.returncodes[first] not in _STEP_KILL_SIGNALS


def _last_error(srun_log: Path) -> str:
    lines = srun_log.read_text(errors="replace").splitlines() if srun_log.exists() else []
    errors = [line.strip() for line in lines if "error" in line.lower()]
    return errors[-1][:300] if errors else "no error printed"


def launch_step(
    config_path: Path, *, world: int, log_dir: Path, launcher: LauncherConfig
) -> NodesLaunch:
    """Run one trial's ``world`` ranks as one srun step over ``launcher.nnodes`` nodes."""
    nproc = ranks_per_node(world, launcher)
    script = log_dir / "node.sh"
    script.write_text(node_script(launcher, nproc=nproc, log_dir=log_dir, config_path=config_path))
    for stale in log_dir.glob("rank*.exit.json"):
        stale.unlink()
    started, start_wall = time.monotonic(), time.time()
    srun_log = log_dir / "srun.log"
    proc = start_logged(srun_command(launcher, script=script, log_dir=log_dir), None, srun_log)
    codes, times, timed_out = _supervise([(proc, srun_log)], launcher.timeout_s, started)
    wall = time.monotonic() - started
    step = LaunchResult(codes, timed_out, wall, [srun_log], exit_s=times, pids=[proc.pid])
    ranks = read_records(log_dir, world, start_wall)
    ranks.timed_out, ranks.wall_s = timed_out, wall
    cause = None
    if not timed_out:
        cause = slurm_cause(log_dir, rank_failed=failed_by_itself(ranks))
        if cause is None and ranks.first_failed is None and codes[0] not in (0, None):
            cause = Verdict("crash", f"srun exited with code {codes[0]}: {_last_error(srun_log)}")
    return NodesLaunch(ranks, step, cause)
