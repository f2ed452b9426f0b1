"""The strategies bench/search_efficiency.py replays, each built as a sweep builds it.

random, tpe and model are the project's sampler configs (conf/sampler/), created by
tuner.study.make_sampler with the seed as `sweep.seed`; model is bound to the space by
tuner.guided_sweep.prepare, the sweep's own code path, and stops by its own rule. The
DeepSpeed-like strategy is DeepSpeed's autotuner's space: every ZeRO stage x micro-batch
(Optuna's GridSampler, in seeded order), the other knobs at the recording's defaults.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from bench.search_replay import Grid, Replay, deepspeed_space, replay
from tuner import guided_sweep
from tuner.config import load
from tuner.machine import current
from tuner.study import make_sampler
from tuner.sweep_checks import sweep_space

log = logging.getLogger(__name__)

SAMPLERS = ("random", "tpe", "model")  # conf/sampler/ options replayed over the whole space
DEEPSPEED = "deepspeed-like"
STRATEGIES = (*SAMPLERS, DEEPSPEED)


@contextlib.contextmanager
def recorded_profile(profile: dict[str, Any]) -> Iterator[None]:
    """`cluster=local` reads this machine's profile from XDG_CACHE_HOME (tuner.perf.local);
    here it finds the one saved with the grid, so that the model ranks with the figures of the
    machine that measured the table, and nothing is measured again."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "paratune" / "local-cluster.json"
        path.parent.mkdir()
        path.write_text(json.dumps({**profile, "machine": current().id}))
        before = os.environ.get("XDG_CACHE_HOME")
        os.environ["XDG_CACHE_HOME"] = tmp
        try:
            yield
        finally:
            if before is None:
                del os.environ["XDG_CACHE_HOME"]
            else:
                os.environ["XDG_CACHE_HOME"] = before


def run_strategy(grid: Grid, name: str, seed: int, *, until_found: bool = True) -> Replay:
    """One replay of strategy ``name`` with ``seed``, as a sweep with `sweep.seed=seed`."""
    if name == DEEPSPEED:
        space = deepspeed_space(grid)
        choices = {k: list(d.choices) for k, d in space.items()}  # type: ignore[attr-defined]
        sampler = optuna.samplers.GridSampler(choices, seed=seed)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        return replay(grid, study, space, until_found=until_found)
    cfg = load([*grid.cfg.overrides, f"sampler={name}", f"sweep.seed={seed}"])
    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg))
    stop = guided_sweep.prepare(cfg, study, sweep_space(cfg), log.debug)
    return replay(grid, study, grid.distributions, stop_check=stop, until_found=until_found)


def run_all(grid: Grid, seeds: int, strategies: tuple[str, ...] = STRATEGIES) -> dict:
    """Every strategy over ``seeds`` seeds: {strategy: [Replay, ...]}."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return {s: [run_strategy(grid, s, seed) for seed in range(seeds)] for s in strategies}
