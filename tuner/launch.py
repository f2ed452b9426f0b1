"""One trial = one process group of N engine ranks, with a verdict on how it ended.

Failure taxonomy: ``oom`` (an allocator's out-of-memory error, or the kernel's OOM killer),
``timeout``, ``nan`` (the engine stopped a diverged run), ``crash`` (any other failure, or no
complete result). The evidence and its order are in tuner/failures.py.
"""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine import warm_start
from engine.config import ConfigError, RunConfig
from engine.launch import engine_command, launch
from engine.repeats import merge as merge_repeats
from engine.results import write_json_atomic
from tuner.config import LauncherConfig
from tuner.early_stop import EARLY_STOP, Verdict, Watch
from tuner.failures import classify
from tuner.launcher_checks import ranks_per_node
from tuner.slurm import launch_step
from tuner.torchrun import launch_nodes

log = logging.getLogger(__name__)
# launchers whose ranks may span nodes (launcher.name -> how one launch starts them)
NODE_LAUNCHERS = {"torchrun": launch_nodes, "slurm": launch_step}


@dataclass
class TrialOutcome:
    ok: bool
    result: dict[str, Any] | None
    reason: str | None = None  # oom | timeout | nan | crash
    detail: str = ""
    log_dir: Path = field(default_factory=Path)
    wall_s: float = 0.0
    returncodes: list[int | None] = field(default_factory=list)
    early_stop: Verdict | None = None  # why the tuner ended it early (tuner/early_stop.py)


def check_machine(cfg: RunConfig, launcher: LauncherConfig) -> None:
    """Refuse a world size this machine cannot start, before launching anything."""
    # on each node (this machine is one of them, and stands for the others)
    world = ranks_per_node(cfg.parallel.n_ranks, launcher)
    if world > launcher.max_ranks:
        raise ConfigError(
            f"parallel.dp * parallel.tp * parallel.pp = {cfg.parallel.n_ranks} ranks, {world} "
            f"per node, but at most launcher.max_ranks={launcher.max_ranks} run on this "
            f"machine; valid: a layout of <= {launcher.max_ranks} ranks per node (or raise "
            "launcher.max_ranks)."
        )
    wants_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    # under Slurm the ranks run on nodes the cluster allocates, whose GPUs this one may lack
    if wants_cuda and launcher.name != "slurm" and world > torch.cuda.device_count():
        gpus = torch.cuda.device_count()
        raise ConfigError(
            f"{world} ranks need {world} GPUs (NCCL runs one rank per GPU), but this machine has "
            f"{gpus}; valid: parallel.dp * tp * pp <= {gpus} per node."
        )


def _launch_once(
    cfg: RunConfig, run_dir: Path, launcher: LauncherConfig, watch: Watch | None = None
) -> TrialOutcome:
    run_dir.mkdir(parents=True, exist_ok=True)
    if launcher.name != "local":  # other nodes see the trial's files by absolute paths only
        run_dir = run_dir.resolve()
    result_path = run_dir / "result.json"
    result_path.unlink(missing_ok=True)
    cfg = RunConfig.from_dict({**cfg.to_dict(), "out": str(result_path), "progress": str(run_dir)})
    config_path = run_dir / "config.json"
    write_json_atomic(config_path, cfg.to_dict())
    cause = None  # a node's failure that explains its ranks' (multi-node launchers)
    if launcher.name in NODE_LAUNCHERS:
        start = NODE_LAUNCHERS[launcher.name]
        nodes = start(config_path, world=cfg.parallel.n_ranks, log_dir=run_dir, launcher=launcher)
        launched, cause = nodes.ranks, nodes.cause
    else:
        launched = launch(
            engine_command(config_path),
            nproc=cfg.parallel.n_ranks,
            log_dir=run_dir,
            timeout_s=launcher.timeout_s,
            poll=watch.poll_for(cfg, run_dir) if watch is not None else None,
            zygote=warm_start.shared() if launcher.fork_ranks else None,
        )
        if launched.stopped and watch is not None and watch.verdict is not None:
            return TrialOutcome(
                ok=False,
                result=None,
                reason=EARLY_STOP,
                detail=watch.verdict.reason,
                log_dir=run_dir,
                wall_s=launched.wall_s,
                returncodes=launched.returncodes,
                early_stop=watch.verdict,
            )
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    verdict = classify(launched, result)
    if cause is not None and verdict.reason == "crash":
        verdict = cause
    reason, detail = verdict.reason, verdict.detail
    if reason == "timeout" and launched.timed_out:  # not a limit the cluster enforced
        detail = f"no result within launcher.timeout_s={launcher.timeout_s:g}s"
    if reason is None and -signal.SIGABRT in launched.returncodes:
        log.warning(
            "a rank aborted at exit after writing complete results (%s)", launched.returncodes
        )
    return TrialOutcome(
        ok=reason is None,
        result=result,
        reason=reason,
        detail=detail,
        log_dir=run_dir,
        wall_s=launched.wall_s,
        returncodes=launched.returncodes,
    )


def run_trial(
    cfg: RunConfig, *, trial_dir: Path, launcher: LauncherConfig, watch: Watch | None = None
) -> TrialOutcome:
    """Run the configuration ``measure.repeats`` times (independent launches, each in its own
    folder when more than one) and merge the results. Never raises for a bad run: the first
    failed repeat is the trial's outcome. ``watch``: follows the local launcher's ranks and
    may end the trial early (tuner/early_stop.py)."""
    repeats = cfg.measure.repeats
    outcomes = []
    for r in range(repeats):
        run_dir = trial_dir if repeats == 1 else trial_dir / f"repeat{r}"
        outcome = _launch_once(cfg, run_dir, launcher, watch)
        outcomes.append(outcome)
        if not outcome.ok:
            outcome.wall_s = sum(o.wall_s for o in outcomes)
            return outcome
    if repeats == 1:
        return outcomes[0]
    merged = merge_repeats([o.result for o in outcomes])
    write_json_atomic(trial_dir / "result.json", merged)
    return TrialOutcome(
        ok=True,
        result=merged,
        log_dir=trial_dir,
        wall_s=sum(o.wall_s for o in outcomes),
        returncodes=outcomes[-1].returncodes,
    )
