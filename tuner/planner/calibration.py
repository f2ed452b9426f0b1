"""Fitting the step-time model to measured sweeps (`plan.calibrate_from=[NAME, ...]`): each
completed trial's configuration, median step time and the step's measured parts (its
breakdown, ``tuner.perf.parts``), on this machine's measured profile at that trial's world
size."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.config import ConfigError, RunConfig
from tuner.config import Loaded
from tuner.perf import local
from tuner.perf.cluster import Cluster
from tuner.perf.errors import ErrorBands, layout_kind
from tuner.perf.model import PART_WEIGHT, Coefficients, fit, prior_for
from tuner.perf.parts import measured as measured_parts


@dataclass(frozen=True)
class Fitted:
    coeffs: Coefficients
    bands: ErrorBands
    n_trials: int

    def describe(self) -> str:
        values = ", ".join(f"{k} {v:.3g}" for k, v in self.coeffs.values.items())
        return f"fitted to {self.n_trials} trials ({self.coeffs.source}): {values}"


@dataclass(frozen=True)
class MeasuredStep:
    """One completed trial, as calibration uses it."""

    cfg: RunConfig
    step_time_s: float  # median over the timed steps
    parts: dict[str, float] | None  # seconds per part (tuner.perf.parts.PARTS); None: unmeasured

    @classmethod
    def of(cls, result: dict) -> MeasuredStep:
        """From a trial's result (result.json)."""
        cfg = RunConfig.from_dict(result["config"])
        return cls(cfg, result["step_time_s"], measured_parts(result))


def measured_steps(cfg: Loaded, names: list[str]) -> list[MeasuredStep]:
    """Every completed trial of the named sweeps."""
    import optuna

    from tuner.study import storage_for, stored_result, study_exists

    out = []
    for name in names:
        named = dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, name=name))
        if not study_exists(named):
            raise ConfigError(f"`plan.calibrate_from` names sweep {name!r}, which does not exist.")
        study = optuna.load_study(study_name=name, storage=storage_for(named))
        for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            result = stored_result(trial)
            if result.get("step_time_s"):
                out.append(MeasuredStep.of(result))
    if not out:
        raise ConfigError(f"`plan.calibrate_from`={names} holds no completed trial to fit to.")
    return out


def fit_measured(
    measured: list[MeasuredStep], *, source: str, part_weight: float = PART_WEIGHT
) -> Fitted:
    """The model fitted to trials measured on this machine (each on the local profile of its
    own world size), to their step times and measured parts (``part_weight``: 0 fits the
    step times alone), with the fit's step-time residuals by kind of layout."""
    profiles: dict[int, Cluster] = {}

    def cluster_of(c: RunConfig) -> Cluster:
        n = c.parallel.n_ranks
        if n not in profiles:
            profiles[n] = local.cluster(n, mem_gib=1e6)
        return profiles[n]

    some = cluster_of(measured[0].cfg)
    result = fit(
        [(m.cfg, m.step_time_s) for m in measured],
        cluster_of,
        prior=prior_for(some),
        source=source,
        parts=[m.parts for m in measured],
        part_weight=part_weight,
    )
    kinds = [layout_kind(m.cfg.parallel.dp, m.cfg.parallel.tp, m.cfg.parallel.pp) for m in measured]
    bands = ErrorBands.from_residuals(kinds, result.residuals, f"fit residuals ({source})")
    return Fitted(result.coeffs, bands, len(measured))


def fit_to_sweeps(cfg: Loaded, names: list[str], cluster: Cluster) -> Fitted:
    del cluster  # the coefficients carry over; the rates are the planned cluster's own
    return fit_measured(measured_steps(cfg, names), source=f"sweeps {', '.join(names)}")
