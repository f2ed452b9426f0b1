"""Search strategies replayed over a recorded grid: no process is launched.

The grid (bench/results/search_grid.csv) holds every runnable layout of one space measured
once. A replay runs a real Optuna sampler against a study whose "objective" is that table:
a proposed layout gets its recorded tokens/s and costs its recorded trial time; a layout
the table lacks cannot run here and is pruned before launch, as a sweep prunes it, at no
cost; a layout proposed again is a repeat, recorded without running (tuner.sweep._reuse).
The replay stops where a sweep would (tuner.sweep): every distinct layout tried, the model's
stop rule, or too many unproductive proposals in a row. The figure of merit is the trial
time spent until the first layout within ``TOLERANCE`` of the grid's best, as a fraction of
the time measuring the whole grid took.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState

from tuner import space as space_mod
from tuner.config import Loaded, replace_keys
from tuner.feasibility import runnable
from tuner.study import LAYOUT_ATTR, RESULT_ATTR, tell
from tuner.sweep import MAX_UNPRODUCTIVE_IN_A_ROW

TOLERANCE = 0.03  # "found": a layout within 3% of the grid's best tokens/s
# the DeepSpeed autotuner's space: ZeRO stage x micro-batch, every other knob at its default
DEEPSPEED_KEYS = ("parallel.zero", "train.micro_batch")

StopCheck = Callable[[optuna.Study], "str | None"]


@dataclass(frozen=True)
class Row:
    params: dict[str, Any]
    state: str  # COMPLETE, FAIL (ran and failed: costs its time)
    fail_reason: str  # the failure class a FAIL row recorded (oom, crash, timeout, ...)
    tokens_per_s: float | None
    duration_s: float  # the trial's wall time, as the sweep recorded it
    result: dict[str, Any]  # what a sweep stores on the trial (the model reads it)


@dataclass
class Grid:
    cfg: Loaded  # the recording's config: base run and space
    distributions: dict[str, BaseDistribution]
    rows: dict[str, Row]  # space.layout_key -> the layout's measurement

    @property
    def best(self) -> float:
        return max(r.tokens_per_s for r in self.rows.values() if r.tokens_per_s is not None)

    @property
    def total_s(self) -> float:
        return sum(r.duration_s for r in self.rows.values())

    def key(self, params: dict[str, Any]) -> str:
        return space_mod.layout_key(self.cfg.run, params)


def _choice(dist: BaseDistribution, value: Any) -> Any:
    """The distribution's own choice for a value read back from CSV (2 may come back 2.0)."""
    if not isinstance(dist, CategoricalDistribution):
        return int(value)
    for c in dist.choices:
        if str(c) == str(value) or (isinstance(c, (int, float)) and c == pd.to_numeric(value)):
            return c
    raise ValueError(f"{value!r} is none of the space's choices {dist.choices}")


def load_grid(table: pd.DataFrame, cfg: Loaded, distributions: dict[str, BaseDistribution]) -> Grid:
    """The recorded table (one row per launched layout) keyed by the run each row launched."""
    rows: dict[str, Row] = {}
    for rec in table.to_dict("records"):
        params = {k: _choice(d, rec[k]) for k, d in distributions.items()}
        run = runnable(replace_keys(cfg.run, params), cfg.launcher)
        ok = rec["state"] == "COMPLETE" and not pd.isna(rec["tokens_per_s"])
        tps = float(rec["tokens_per_s"]) if ok else None
        result = {"config": run.to_dict()}
        if ok:
            result.update(tokens_per_s=tps, step_time_s=float(rec["step_time_s"]))
        why = "" if ok else str(rec.get("fail_reason") or "unmeasured")
        rows[space_mod.layout_key(cfg.run, params)] = Row(
            params, "COMPLETE" if ok else "FAIL", why, tps, float(rec["duration_s"]), result
        )
    return Grid(cfg, dict(distributions), rows)


@dataclass
class Replay:
    """One strategy, one seed: what it spent until it found a layout within tolerance."""

    spent_s: float = 0.0  # recorded trial time of the layouts it launched
    proposed: int = 0  # trials asked of the sampler: launched, pruned and repeats
    launched: int = 0
    found_s: float | None = None  # spent when it first launched a layout within tolerance
    best: float = 0.0  # best tokens/s it measured
    stopped: str = ""  # why it stopped
    order: list[str] = field(default_factory=list)  # layout keys, as launched


def _record(study: optuna.Study, trial: optuna.Trial, row: Row) -> None:
    trial.set_user_attr(RESULT_ATTR, row.result)
    trial.set_user_attr("duration_s", row.duration_s)
    if row.tokens_per_s is None:
        trial.set_user_attr("fail_reason", row.fail_reason)
        tell(study, trial, state=TrialState.FAIL)
    else:
        tell(study, trial, [row.tokens_per_s])


def replay(
    grid: Grid,
    study: optuna.Study,
    distributions: dict[str, BaseDistribution],
    *,
    stop_check: StopCheck | None = None,
    until_found: bool = True,
    max_asks: int = 20_000,
) -> Replay:
    """Ask ``study``'s sampler for layouts of ``distributions`` (the other knobs stay at the
    grid's base run) and answer from the table, as a sweep would measure them."""
    target = grid.best * (1 - TOLERANCE)
    layouts = {grid.key(p) for p in space_mod.SearchSpace(distributions).grid()}
    out, tried, unproductive = Replay(), {}, 0
    for _ in range(max_asks):
        why = stop_check(study) if stop_check else None
        if why:
            out.stopped = why
            break
        if layouts <= set(tried):
            out.stopped = f"every one of the {len(layouts)} distinct configurations tried"
            break
        if unproductive >= MAX_UNPRODUCTIVE_IN_A_ROW:
            out.stopped = f"{unproductive} unproductive proposals in a row"
            break
        trial = study.ask(distributions)
        out.proposed += 1
        key = grid.key(trial.params)
        trial.set_user_attr(LAYOUT_ATTR, key)
        row = grid.rows.get(key)
        if key in tried:  # a repeat: the earlier figures, nothing run
            trial.set_user_attr("duplicate_of", tried[key])
            if row is None:
                tell(study, trial, state=TrialState.PRUNED)
            else:
                _record(study, trial, row)
            unproductive += 1
            continue
        tried[key] = trial.number
        if row is None:  # not runnable here: pruned before launch, costs nothing
            trial.set_user_attr("fail_reason", "infeasible")
            tell(study, trial, state=TrialState.PRUNED)
            unproductive += 1
            continue
        unproductive = 0
        _record(study, trial, row)
        out.spent_s += row.duration_s
        out.launched += 1
        out.order.append(key)
        out.best = max(out.best, row.tokens_per_s or 0.0)
        if out.found_s is None and (row.tokens_per_s or 0.0) >= target:
            out.found_s = out.spent_s
            if until_found:
                out.stopped = "found"
                break
    return out


def best_reachable(grid: Grid, distributions: dict[str, BaseDistribution]) -> float:
    """The best tokens/s of any layout a space can reach (0 if none ran), from the table."""
    keys = {grid.key(p) for p in space_mod.SearchSpace(distributions).grid()}
    return max((grid.rows[k].tokens_per_s or 0.0 for k in keys if k in grid.rows), default=0.0)


def deepspeed_space(grid: Grid) -> dict[str, BaseDistribution]:
    """ZeRO stage x micro-batch, with the choices the recorded space gives them."""
    return {k: grid.distributions[k] for k in DEEPSPEED_KEYS}


def quantile(values: list[float], q: float) -> float:
    """An observed value (inf where a seed never found the target), not an interpolation."""
    return float(np.quantile(np.array(values, dtype=float), q, method="inverted_cdf"))


def summary(grid: Grid, replays: list[Replay]) -> dict[str, Any]:
    """Median and 90th percentile of the time to the target, as fractions of the grid's."""
    fractions = [r.found_s / grid.total_s if r.found_s is not None else math.inf for r in replays]
    return {
        "seeds": len(replays),
        "found": sum(r.found_s is not None for r in replays),
        "min_fraction": min(fractions),
        "median_fraction": quantile(fractions, 0.5),
        "p90_fraction": quantile(fractions, 0.9),
        "median_launched": quantile([r.launched for r in replays], 0.5),
        "max_fraction": max(fractions),
        "best_vs_grid_best": quantile([r.best / grid.best for r in replays], 0.5),
        "stopped": sorted({r.stopped for r in replays if r.stopped != "found"}),
        "fractions": fractions,
    }
