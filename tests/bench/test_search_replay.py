"""The search-efficiency replay on a synthetic grid: every runnable layout of the bench's space
with a throughput and a trial time computed from a formula of its parameters, so that the
replay's accounting can be checked against sums over the same table."""

from __future__ import annotations

import io
import math

import optuna
import pandas as pd
import pytest

from bench.search_efficiency import SPACE
from bench.search_record import runnable_layouts
from bench.search_replay import (
    TOLERANCE,
    best_reachable,
    deepspeed_space,
    load_grid,
    quantile,
    replay,
    summary,
)
from bench.search_strategies import DEEPSPEED, recorded_profile, run_strategy
from tuner.config import load
from tuner.sweep_checks import sweep_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
# a machine profile at 2 ranks for the model (tuner.perf.local's entry), in plausible CPU figures
PROFILE = {
    "world_sizes": {
        "2": {
            "threads": 1,
            "peak_tflops": {"fp32": 0.05, "bf16": 0.02},
            "hbm_gbps": 10.0,
            "link_gbps": 1.0,
            "link_latency_us": 50.0,
        }
    }
}


def _tokens_per_s(p: dict) -> float:
    """Larger micro-batches and bf16 help, tensor and pipeline parallelism and ZeRO cost."""
    tps = 1000.0 * p["train.micro_batch"] ** 0.5 * (1.3 if p["train.precision"] == "bf16" else 1)
    tps /= p["parallel.tp"] ** 1.5 * (1 + 0.4 * (p["parallel.pp"] - 1))
    return tps * (1 - 0.06 * p["parallel.zero"])


def _crashes(p: dict) -> bool:
    return p["parallel.zero"] == 3 and p["train.micro_batch"] == 4


@pytest.fixture(scope="module")
def grid():
    cfg = load(SPACE)
    rows = []
    for p in runnable_layouts(cfg):
        tps = _tokens_per_s(p)
        crash = _crashes(p)
        rows.append(
            {
                **p,
                "state": "FAIL" if crash else "COMPLETE",
                "tokens_per_s": math.nan if crash else tps,
                "step_time_s": math.nan if crash else 8 * 128 / tps,
                "duration_s": 3.0 + 2e4 / tps,
            }
        )
    # through CSV, as the bench reads it
    table = pd.read_csv(io.StringIO(pd.DataFrame(rows).to_csv(index=False)))
    return load_grid(table, cfg, sweep_space(cfg).distributions)


def _best_params(grid) -> dict:
    return max(grid.rows.values(), key=lambda r: r.tokens_per_s or 0).params


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_strategy_that_proposes_the_best_first_pays_only_its_trial(grid):
    best = _best_params(grid)
    fixed = optuna.samplers.PartialFixedSampler(best, optuna.samplers.RandomSampler(seed=0))
    r = replay(grid, optuna.create_study(direction="maximize", sampler=fixed), grid.distributions)
    assert r.launched == 1 and r.stopped == "found"
    assert r.found_s == grid.rows[grid.key(best)].duration_s < grid.total_s / 10


def test_time_is_summed_over_launched_layouts_up_to_the_first_within_tolerance(grid):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    r = replay(grid, study, grid.distributions, until_found=False)
    launched = [grid.rows[k] for k in r.order]
    assert len(set(r.order)) == len(r.order) == r.launched
    assert r.spent_s == pytest.approx(sum(row.duration_s for row in launched))
    # pruned proposals (layouts the table lacks) and repeats cost nothing
    assert r.proposed > r.launched
    target = grid.best * (1 - TOLERANCE)
    hits = [i for i, row in enumerate(launched) if (row.tokens_per_s or 0) >= target]
    if hits:
        assert r.found_s == pytest.approx(sum(row.duration_s for row in launched[: hits[0] + 1]))
    else:  # stopped (too many unproductive proposals in a row) before it launched one
        assert r.found_s is None
    if r.stopped.startswith("every one"):
        assert r.spent_s == pytest.approx(grid.total_s)


def test_deepspeed_like_space_reaches_the_best_of_its_layouts_only(grid):
    space = deepspeed_space(grid)
    assert set(space) == {"parallel.zero", "train.micro_batch"}
    base = grid.cfg.run  # the knobs the DeepSpeed-like space leaves at their defaults
    reachable = [
        row.tokens_per_s
        for row in grid.rows.values()
        if row.tokens_per_s is not None
        and row.params["parallel.tp"] == base.parallel.tp
        and row.params["parallel.pp"] == base.parallel.pp
        and row.params["train.precision"] == base.train.precision
    ]
    assert best_reachable(grid, space) == max(reachable) < grid.best
    r = run_strategy(grid, DEEPSPEED, seed=1, until_found=False)
    zero, mb = space["parallel.zero"], space["train.micro_batch"]
    assert r.launched == len(zero.choices) * len(mb.choices)
    assert r.best == max(reachable) and r.found_s is None


def test_every_strategy_replays_and_the_model_launches_only_runnable_layouts(grid):
    with recorded_profile(PROFILE):
        runs = {s: [run_strategy(grid, s, i) for i in range(2)] for s in ("random", "tpe", "model")}
    for r in runs["model"]:
        assert r.proposed == r.launched  # it ranks runnable, untried layouts only
    for s, rs in runs.items():
        st = summary(grid, rs)
        assert st["seeds"] == 2
        for r, f in zip(rs, st["fractions"], strict=True):
            assert (f == math.inf) == (r.found_s is None)
            assert f == math.inf or 0 < f <= 1
            assert r.found_s is not None or r.stopped != "found", s


def test_quantiles_are_observed_values_and_keep_not_found_as_inf():
    values = [0.1, 0.2, math.inf, 0.3]
    assert quantile(values, 0.5) in values
    assert quantile(values, 0.9) == math.inf
