"""Model-guided search: the calibrated step-time model (tuner.perf) decides what to launch.

`sampler=model` ranks every runnable layout of the space by predicted tokens/s, launches the
predicted best untried one, refits the model's coefficients to every measured trial of the
study after each measurement and ranks again; it stops, saying why, once no untried layout's
optimistic prediction (its predicted step time less the largest error the fit makes on a
trial left out of it) beats the best measured throughput — but not before every value of every
searched knob has been measured once: the leave-one-out error says nothing about a value the
fit has never seen (bf16 against fp32 on a CPU whose small matmuls the datasheet-style rates
misjudge, say), so while one is unseen, the best-predicted layout that has it is launched
instead of stopping. `sweep.seed_from_plan=K` puts the model's top K first in any sampler's
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
from tuner.early_stop import partial_tokens_per_s
from tuner.perf.cluster import Cluster
from tuner.perf.features import FEATURES, features
from tuner.perf.model import Coefficients, fit_rows, held_out_errors
from tuner.study import LAYOUT_ATTR, stored_result

log = logging.getLogger(__name__)

# measured trials before the fit replaces the prior: fewer leave most coefficients unexercised
MIN_FIT_TRIALS = 4
# the prior's pull on the refits (tuner.perf.model.fit): weak, as every measurement is of the
# machine being searched; a pull as strong as a calibration's held coefficients 100x off their
# prior (per-call costs on CPU) so far from the truth that the search measured most of a space
PRIOR_WEIGHT = 0.005


@dataclass(frozen=True)
class Candidate:
    key: str  # space.layout_key: the run it launches, normalised
    params: dict[str, Any]
    cfg: RunConfig
    x: np.ndarray  # its features (FEATURES order) on the cluster it runs on
    tokens: int  # tokens per step
    knobs: dict[str, Any]  # the searched settings that take effect in it (space.effective_params)


@dataclass(frozen=True)
class Ranking:
    best: Candidate | None  # the untried candidate predicted fastest
    predicted_tokens_per_s: float
    band: float | None  # largest relative step-time error on a trial left out; None: no fit
    n_measured: int


def candidates(
    grid: list[dict[str, Any]],
    base: RunConfig,
    *,
    runnable: Callable[[RunConfig], RunConfig],
    cluster_of: Callable[[int], Cluster],
    layout_key: Callable[[RunConfig, dict[str, Any]], str],
    replace: Callable[[RunConfig, dict[str, Any]], RunConfig],
    effective: Callable[[RunConfig, dict[str, Any]], dict[str, Any]] = lambda _b, p: dict(p),
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
        knobs = effective(base, params)
        out.append(Candidate(key, params, cfg, np.array([x[k] for k in FEATURES]), tokens, knobs))
    return out


@dataclass(frozen=True)
class Measured:
    trial: int
    cfg: RunConfig
    step_time_s: float
    tokens_per_s: float


def _measured(study: optuna.Study, by_key: dict[str, Candidate]) -> list[Measured]:
    """Every measured trial of the study: completed ones, and those stopped early (their
    partial median: slower than the best, which is what the fit should learn from them)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.state == TrialState.PRUNED:
            cand, tps = by_key.get(t.user_attrs.get(LAYOUT_ATTR, "")), partial_tokens_per_s(t)
            if cand is not None and tps:
                out.append(Measured(t.number, cand.cfg, cand.tokens / tps, tps))
            continue
        r = stored_result(t)
        if r.get("step_time_s") and r.get("tokens_per_s") and r.get("config"):
            cfg = RunConfig.from_dict(r["config"])
            out.append(Measured(t.number, cfg, r["step_time_s"], r["tokens_per_s"]))
    return out


def _tried(study: optuna.Study) -> set[str]:
    """Layouts already launched, pruned or being run (by this worker or another)."""
    skip = (TrialState.WAITING,)
    return {
        t.user_attrs[LAYOUT_ATTR]
        for t in study.get_trials(deepcopy=False)
        if t.state not in skip and LAYOUT_ATTR in t.user_attrs
    }


def _seen_values(
    study: optuna.Study, measured: list[Measured], cands: list[Candidate]
) -> dict[str, set[Any]]:
    """Each searched knob's values that took effect in the study's measured trials: a
    pipeline schedule drawn for a layout without pipeline stages was not seen."""
    by_key = {c.key: c.knobs for c in cands}
    numbers = {m.trial for m in measured}
    seen: dict[str, set[Any]] = {}
    for t in study.get_trials(deepcopy=False):
        if t.number in numbers:
            for k, v in by_key.get(t.user_attrs.get(LAYOUT_ATTR), t.params).items():
                seen.setdefault(k, set()).add(v)
    return seen


def _has_unseen(c: Candidate, seen: dict[str, set[Any]]) -> bool:
    return any(v not in seen.get(k, set()) for k, v in c.knobs.items())


class ModelSampler(BaseSampler):
    """An Optuna sampler that launches what the calibrated model ranks best (see module doc).

    It needs the sweep's context (``bind``), given by tuner.sweep before the first trial;
    unbound, or for parameters outside the space, it samples at random."""

    def __init__(
        self,
        seed: int | None = None,
        min_fit_trials: int = MIN_FIT_TRIALS,
        prior_weight: float = PRIOR_WEIGHT,
    ) -> None:
        self._random = RandomSampler(seed=seed)
        self._min_fit = min_fit_trials
        self._prior_weight = prior_weight
        self._space: dict[str, BaseDistribution] = {}
        self._cands: list[Candidate] = []
        self._by_key: dict[str, Candidate] = {}
        self._prior = Coefficients()
        self._cluster_of: Callable[[int], Cluster] | None = None
        self._rows: dict[int, np.ndarray] = {}  # features of measured trials, by number

    def bind(
        self,
        space: dict[str, BaseDistribution],
        cands: list[Candidate],
        *,
        prior: Coefficients,
        cluster_of: Callable[[int], Cluster],
    ) -> None:
        self._space, self._cands = dict(space), cands
        self._by_key = {c.key: c for c in cands}
        self._prior, self._cluster_of = prior, cluster_of

    def ranking(self, study: optuna.Study) -> Ranking:
        """The model refitted to the study's measurements, and its pick among untried layouts."""
        measured = _measured(study, self._by_key)
        coeffs, band = self._prior, None
        if len(measured) >= self._min_fit and self._cluster_of is not None:
            rows = np.array([self._features(m) for m in measured])
            times = np.array([m.step_time_s for m in measured])
            source = f"{len(measured)} trials of this sweep"
            w = self._prior_weight
            coeffs = fit_rows(rows, times, prior=self._prior, prior_weight=w, source=source).coeffs
            # the band: the worst error on a trial the fit did not see (leave-one-out)
            errors = held_out_errors(rows, times, prior=self._prior, prior_weight=w)
            band = float(np.max(np.abs(errors)))
        tried = _tried(study)
        untried = [(c, tps) for c, tps in self.predicted(coeffs) if c.key not in tried]
        best, best_tps = untried[0] if untried else (None, 0.0)
        if best is not None and band is not None and band < 1:
            top = max(m.tokens_per_s for m in measured)
            if best_tps / (1 - band) < top:  # the fit would stop here: unless a value is unseen
                seen = _seen_values(study, measured, self._cands)
                new = [(c, t) for c, t in untried if _has_unseen(c, seen)]
                if new:
                    best, best_tps = new[0]
        return Ranking(best, best_tps, band, len(measured))

    def _features(self, m: Measured) -> np.ndarray:
        if m.trial not in self._rows:
            assert self._cluster_of is not None
            x = features(m.cfg, self._cluster_of(m.cfg.parallel.n_ranks))
            self._rows[m.trial] = np.array([x[k] for k in FEATURES])
        return self._rows[m.trial]

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
        done = _measured(study, self._by_key)
        if r.band is None or r.band >= 1:
            return None
        if _has_unseen(r.best, _seen_values(study, done, self._cands)):
            return None
        measured = [m.tokens_per_s for m in done]
        optimistic = r.predicted_tokens_per_s / (1 - r.band)
        if measured and optimistic < max(measured):
            return (
                f"sampler=model: no untried layout can beat the best measured "
                f"{max(measured):,.0f} tok/s (the most promising is predicted "
                f"{r.predicted_tokens_per_s:,.0f} tok/s, at most {optimistic:,.0f} with the "
                f"largest error on a trial left out of the fit, {100 * r.band:.0f}% over "
                f"{r.n_measured} trials)"
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
