"""One trial = one process group of N engine ranks, with a verdict on how it ended.

Failure taxonomy: ``oom`` (out of memory, or killed by the kernel's OOM killer), ``timeout``,
``nan`` (the engine stopped a diverged run), ``crash`` (any other non-zero exit, or no result).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.config import ConfigError, RunConfig
from engine.launch import engine_command, launch
from engine.results import merge_repeats, write_json_atomic
from engine.runner import EXIT_DIVERGED
from tuner.config import LauncherConfig

log = logging.getLogger(__name__)

_OOM = re.compile(r"out of memory|MemoryError|std::bad_alloc|CUDA error: out of memory", re.I)
_ERROR_LINE = re.compile(r"^(\w+(\.\w+)*(Error|Exception)|RuntimeError|AssertionError)\b.*")
SIGKILL, SIGABRT = -9, -6


@dataclass
class TrialOutcome:
    ok: bool
    result: dict[str, Any] | None
    reason: str | None = None  # oom | timeout | nan | crash
    detail: str = ""
    log_dir: Path = field(default_factory=Path)
    wall_s: float = 0.0
    returncodes: list[int | None] = field(default_factory=list)


def check_machine(cfg: RunConfig, launcher: LauncherConfig) -> None:
    """Refuse a world size this machine cannot start, before launching anything."""
    world = cfg.parallel.n_ranks
    if world > launcher.max_ranks:
        raise ConfigError(
            f"parallel.dp * parallel.tp * parallel.pp = {world} ranks, but at most "
            f"launcher.max_ranks={launcher.max_ranks} run on this machine; valid: a layout of "
            f"<= {launcher.max_ranks} ranks (or raise launcher.max_ranks)."
        )
    wants_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if wants_cuda and world > torch.cuda.device_count():
        gpus = torch.cuda.device_count()
        raise ConfigError(
            f"{world} ranks need {world} GPUs (NCCL runs one rank per GPU), but this machine has "
            f"{gpus}; valid: parallel.dp * tp * pp <= {gpus}."
        )


def _last_error(log_paths: list[Path]) -> str:
    for path in log_paths:
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for line in reversed(lines):
            if _ERROR_LINE.match(line.strip()):
                return line.strip()[:300]
    return ""


def _classify(
    codes: list[int | None], timed_out: bool, result: dict | None, logs: list[Path]
) -> tuple[str | None, str]:
    text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
    if (result is not None and result.get("status") == "nan") or EXIT_DIVERGED in codes:
        return "nan", (result or {}).get("error", "loss diverged (NaN/inf)")
    if timed_out:
        return "timeout", ""
    if _OOM.search(text) or SIGKILL in codes:
        return "oom", _last_error(logs) or f"a rank was killed (exit codes {codes})"
    if (
        result is not None
        and result.get("status") == "ok"
        and all(c in (0, SIGABRT) for c in codes)
    ):
        return None, ""  # finished and wrote its result; an abort during exit is not a failure
    return "crash", _last_error(logs) or f"exit codes {codes}"


def _launch_once(cfg: RunConfig, run_dir: Path, launcher: LauncherConfig) -> TrialOutcome:
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "result.json"
    result_path.unlink(missing_ok=True)
    cfg = RunConfig.from_dict({**cfg.to_dict(), "out": str(result_path)})
    config_path = run_dir / "config.json"
    write_json_atomic(config_path, cfg.to_dict())
    launched = launch(
        engine_command(config_path),
        nproc=cfg.parallel.n_ranks,
        log_dir=run_dir,
        timeout_s=launcher.timeout_s,
    )
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    reason, detail = _classify(launched.returncodes, launched.timed_out, result, launched.log_paths)
    if reason == "timeout":
        detail = f"no result within launcher.timeout_s={launcher.timeout_s:g}s"
    if reason is None and any(c == SIGABRT for c in launched.returncodes):
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


def run_trial(cfg: RunConfig, *, trial_dir: Path, launcher: LauncherConfig) -> TrialOutcome:
    """Run the configuration ``measure.repeats`` times (independent launches, each in its own
    folder when more than one) and merge the results. Never raises for a bad run: the first
    failed repeat is the trial's outcome."""
    repeats = cfg.measure.repeats
    outcomes = []
    for r in range(repeats):
        run_dir = trial_dir if repeats == 1 else trial_dir / f"repeat{r}"
        outcome = _launch_once(cfg, run_dir, launcher)
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
