"""Real sweeps for bench/search_efficiency.py: the grid it replays, and the live comparison.

The grid is one sweep that launches every runnable layout of the space once:
`sweep.seed_from_plan=K` queues the K runnable layouts (all of them, or a slice), each once,
and `sweep.n_trials=K` ends the sweep when they are measured. Its trials become one table.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from tuner import space as space_mod
from tuner.config import Loaded, load, replace_keys
from tuner.feasibility import runnable
from tuner.report.frame import trials_frame
from tuner.study import storage_for
from tuner.sweep import NOT_RUN
from tuner.sweep_checks import sweep_space

ROOT = Path(__file__).resolve().parent.parent
# the grid's columns besides the searched parameters
FIGURES = (
    "tokens_per_s",
    "tokens_per_s_min",
    "tokens_per_s_max",
    "step_time_s",
    "peak_mem_bytes",
    "predicted_peak_mem_bytes",
    "duration_s",
    "overhead_s",
)


@dataclass(frozen=True)
class SweepRun:
    name: str
    wall_s: float  # the whole command: start-up, checks, trials, report
    log: str  # what it printed


def tuner_sweep(name: str, overrides: list[str], *, work: Path) -> SweepRun:
    """``python -m tuner sweep`` in ``work``, its output kept in ``work/NAME.log``."""
    cmd = [sys.executable, "-m", "tuner", "sweep", *overrides, f"sweep.name={name}"]
    cmd.append(f"sweep.out_dir={work / 'reports'}")
    print("$", " ".join(cmd[1:]), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"sweep {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return SweepRun(name, wall, proc.stderr)


def load_study(name: str, overrides: list[str], *, work: Path) -> tuple[Loaded, optuna.Study]:
    cfg = load([*overrides, f"sweep.name={name}", f"sweep.out_dir={work / 'reports'}"])
    return cfg, optuna.load_study(study_name=name, storage=storage_for(cfg))


def runnable_layouts(cfg: Loaded) -> list[dict[str, Any]]:
    """The distinct layouts of the space that can run here (pruning's verdict, no launch)."""
    space, seen, out = sweep_space(cfg), set(), []
    for params in space.grid():
        key = space_mod.layout_key(cfg.run, params)
        if key in seen:
            continue
        seen.add(key)
        try:
            runnable(replace_keys(cfg.run, params), cfg.launcher)
        except ValueError:
            continue
        out.append(params)
    return out


def measured_table(cfg: Loaded, study: optuna.Study) -> pd.DataFrame:
    """One row per launched layout: its parameters, state and figures (trials.csv's columns)."""
    df = trials_frame(study)
    launched = df["state"].isin(["COMPLETE", "FAIL"]) & df["duplicate_of"].isna()
    launched &= ~df["fail_reason"].isin(NOT_RUN)
    params = list(sweep_space(cfg).distributions)
    cols = ["number", "layout", "state", "fail_reason", *params, *FIGURES]
    return df.loc[launched, cols].reset_index(drop=True)


def record(
    overrides: list[str], *, work: Path, limit: int = 0, name: str = "search-grid"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Measure every runnable layout of the space (the first ``limit`` in the model's order,
    if given) in one sweep; the table, and what describes it."""
    from tuner.perf import local

    cfg = load(overrides)
    n = len(runnable_layouts(cfg))
    k = min(limit, n) if limit else n
    # every layout measured to the end: the replay needs each one's full figures and time
    extra = [
        "sampler=random",
        f"sweep.seed_from_plan={k}",
        f"sweep.n_trials={k}",
        "sweep.early_stop=false",
    ]
    run = tuner_sweep(name, [*overrides, *extra], work=work)
    cfg, study = load_study(name, overrides, work=work)
    table = measured_table(cfg, study)
    world = str(cfg.run.parallel.world_size)
    profile = {"world_sizes": {world: local.measured_sizes()[int(world)]}}
    meta = {
        "command": " ".join(["python -m tuner sweep", *overrides, *extra, f"sweep.name={name}"]),
        "overrides": overrides,
        "runnable_layouts": n,
        "recorded_layouts": len(table),
        "wall_s": run.wall_s,
        "profile": profile,  # the model's view of this machine when the grid was measured
    }
    return table, meta


def live(overrides: list[str], *, work: Path, n_trials: int, seed: int) -> list[dict[str, Any]]:
    """``sampler=model`` and ``sampler=tpe`` sweeps with the same budget, back to back; which
    goes first alternates with the seed, so that a slow spell of the machine favours neither
    over several seeds."""
    rows = []
    for sampler in ("model", "tpe") if seed % 2 == 0 else ("tpe", "model"):
        name = f"live-{sampler}-s{seed}"
        extra = [f"sampler={sampler}", f"sweep.n_trials={n_trials}", f"sweep.seed={seed}"]
        run = tuner_sweep(name, [*overrides, *extra], work=work)
        cfg, study = load_study(name, overrides, work=work)
        table = measured_table(cfg, study)
        best = table["tokens_per_s"].max()
        best_layout = None if pd.isna(best) else table.loc[table["tokens_per_s"].idxmax()]["layout"]
        stop = [ln for ln in run.log.splitlines() if ln.startswith("sampler=model: no untried")]
        # trials early stopping ended ran too: they count, with the time they took
        cut = [t for t in study.trials if t.user_attrs.get("fail_reason") == "early_stop"]
        cut_s = sum(float(t.user_attrs.get("duration_s") or 0.0) for t in cut)
        rows.append(
            {
                "sampler": sampler,
                "launched": len(table) + len(cut),
                "ended_early": len(cut),
                "best_tokens_per_s": None if pd.isna(best) else float(best),
                "best_layout": best_layout,
                "trial_time_s": float(table["duration_s"].sum()) + cut_s,
                "wall_s": run.wall_s,
                "stopped_early": stop[0] if stop else "",
            }
        )
    return rows
