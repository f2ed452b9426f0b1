"""Model-guided search: the calibrated step-time model (tuner.perf) decides what to launch.

`sampler=model` ranks every runnable layout of the space by predicted tokens/s, launches the
predicted best untried one, refits the model's coefficients to every measured trial of the
study after each measurement and ranks again; it stops, saying why, once no untried layout's
optimistic prediction (its predicted step time less the fit's largest error) beats the best
measured throughput. `sweep.seed_from_plan=K` puts the model's top K first in any sampler's
queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from engine.config import ConfigError, RunConfig
from tuner.perf.cluster import Cluster
from tuner.perf.features import FEATURES, features
from tuner.perf.model import Coefficients, fit
from tuner.study import LAYOUT_ATTR, stored_result

log = logging.getLogger(__name__)

# measured trials before the fit replaces the prior: fewer leave most coefficients unexercised
MIN_FIT_TRIALS = 4


@dataclass(frozen=True)
class Candidate:
    key: str  # space.layout_key: the run it launches, normalised
    params: dict[str, Any]
    cfg: RunConfig
    x: np.ndarray  # its features (FEATURES order) on the cluster it runs on
    tokens: int  # tokens per step


@dataclass(frozen=True)
class Ranking:
    best: Candidate | None  # the untried candidate predicted fastest
    predicted_tokens_per_s: float
    band: float | None  # the fit's largest relative step-time error; None before a fit
    n_measured: int


def candidates(
    grid: list[dict[str, Any]],
    base: RunConfig,
    *,
    runnable: Callable[[RunConfig], RunConfig],
    cluster_of: Callable[[int], Cluster],
    layout_key: Callable[[RunConfig, dict[str, Any]], str],
    replace: Callable[[RunConfig, dict[str, Any]], RunConfig],
) -> list[Candidate]:
    """The distinct layouts of the grid that can run (``runnable`` raises otherwise), with
    their features: computed once, as they do not depend on the coefficients."""
    out, seen = [], set()
    for params in grid:
        key = layout_key(base, params)
        if key in seen:
            continue
        seen.add(key)
        try:
            cfg = runnable(replace(base, params))
        except ValueError:  # Infeasible and ConfigError: not a candidate
            continue
        x = features(cfg, cluster_of(cfg.parallel.n_ranks))
        tokens = cfg.train.global_batch * cfg.model.seq_len
        out.append(Candidate(key, params, cfg, np.array([x[k] for k in FEATURES]), tokens))
    return out


def _measured(study: optuna.Study) -> list[tuple[RunConfig, float, float]]:
    """(config, step seconds, tokens/s) of every completed, measured trial."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        r = stored_result(t)
        if r.get("step_time_s") and r.get("tokens_per_s") and r.get("config"):
            out.append((RunConfig.from_dict(r["config"]), r["step_time_s"], r["tokens_per_s"]))
    return out


def _tried(study: optuna.Study) -> set[str]:
    """Layouts already launched, pruned or being run (by this worker or another)."""
    skip = (TrialState.WAITING,)
    return {
        t.user_attrs[LAYOUT_ATTR]
        for t in study.get_trials(deepcopy=False)
        if t.state not in skip and LAYOUT_ATTR in t.user_attrs
    }


class ModelSampler(BaseSampler):
    """An Optuna sampler that launches what the calibrated model ranks best (see module doc).

    It needs the sweep's context (``bind``), given by tuner.sweep before the first trial;
    unbound, or for parameters outside the space, it samples at random."""

    def __init__(self, seed: int | None = None, min_fit_trials: int = MIN_FIT_TRIALS) -> None:
        self._random = RandomSampler(seed=seed)
        self._min_fit = min_fit_trials
        self._space: dict[str, BaseDistribution] = {}
        self._cands: list[Candidate] = []
        self._prior = Coefficients()
        self._cluster_of: Callable[[int], Cluster] | None = None

    def bind(
        self,
        space: dict[str, BaseDistribution],
        cands: list[Candidate],
        *,
        prior: Coefficients,
        cluster_of: Callable[[int], Cluster],
    ) -> None:
        self._space, self._cands = dict(space), cands
        self._prior, self._cluster_of = prior, cluster_of

    def ranking(self, study: optuna.Study) -> Ranking:
        """The model refitted to the study's measurements, and its pick among untried layouts."""
        measured = _measured(study)
        coeffs, band = self._prior, None
        if len(measured) >= self._min_fit and self._cluster_of is not None:
            cluster_of = self._cluster_of
            result = fit(
                [(c, s) for c, s, _ in measured],
                lambda c: cluster_of(c.parallel.n_ranks),
                prior=self._prior,
                source=f"{len(measured)} trials of this sweep",
            )
            coeffs, band = result.coeffs, float(np.max(np.abs(result.residuals)))
        tried = _tried(study)
        untried = [(c, tps) for c, tps in self.predicted(coeffs) if c.key not in tried]
        best, best_tps = untried[0] if untried else (None, 0.0)
        return Ranking(best, best_tps, band, len(measured))

    def predicted(self, coeffs: Coefficients | None = None) -> list[tuple[Candidate, float]]:
        """Every candidate with its predicted tokens/s (the prior's unless given), best first."""
        values = (coeffs or self._prior).values
        theta = np.array([values[k] for k in FEATURES])
        out = [(c, c.tokens / float(c.x @ theta)) for c in self._cands]
        return sorted(out, key=lambda x: -x[1])

    def stop_reason(self, study: optuna.Study) -> str | None:
        """Why measuring more cannot pay, or None while it may."""
        r = self.ranking(study)
        if r.best is None:
            return f"sampler=model: all {len(self._cands)} runnable layouts have been tried"
        if r.band is None or r.band >= 1:
            return None
        measured = [tps for _, _, tps in _measured(study)]
        optimistic = r.predicted_tokens_per_s / (1 - r.band)
        if measured and optimistic < max(measured):
            return (
                f"sampler=model: no untried layout can beat the best measured "
                f"{max(measured):,.0f} tok/s (the most promising is predicted "
                f"{r.predicted_tokens_per_s:,.0f} tok/s, at most {optimistic:,.0f} with the "
                f"fit's largest error {100 * r.band:.0f}% over {r.n_measured} trials)"
            )
        return None

    # Optuna's sampler interface
    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        best = self.ranking(study).best
        return dict(best.params) if best is not None else {}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)


def require_throughput_first(objectives: list[str]) -> None:
    if objectives[0] != "tokens_per_s":
        raise ConfigError(
            f"`sampler=model` ranks layouts by predicted tokens_per_s, but sweep.objectives="
            f"{objectives}; valid: objectives that start with tokens_per_s, or another sampler."
        )
