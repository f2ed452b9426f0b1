"""The step-time model: step time = Σ coefficient × feature (``tuner.perf.features``), and its
fit to measured steps.

A coefficient is how many times slower than the datasheet rate a part runs once everything
that hides it is accounted for: 1.7 on ``matmul`` is 60% of peak; 0.3 on ``comm_dp0`` means 70%
of DDP's all-reduce hides behind backward. ``matmul_small`` is in rows (a matrix side at which
the matmul runs at half its large-matrix rate, times ``matmul``); ``calls`` and ``step`` are in
seconds.

Calibration is a least-squares fit of the coefficients to measured step times, on relative
errors (a 10 ms step and a 10 s step weigh alike), and, where the steps' breakdowns were
measured, of each group of coefficients to its own part of the step (``tuner.perf.parts``):
compute coefficients to the compute, communication ones to the exposed collectives, and so on.
It is pulled towards the prior coefficients with a small weight, so a part the measurements
do not exercise keeps its prior value instead of an arbitrary one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engine.config import RunConfig
from tuner.perf.cluster import Cluster
from tuner.perf.features import FEATURES, features
from tuner.perf.parts import PARTS, split

# priors for a GPU cluster at datasheet rates: ~60% of peak on large matmuls, half that at a
# 128-row side; HBM-bound work at 70%; links at 80% of their rate with tensor- and pipeline-
# parallel traffic exposed and data-parallel traffic partly hidden behind compute
GPU_PRIOR: dict[str, float] = {
    "matmul": 1.7,
    "matmul_small": 1.7 * 128,
    # tensor-core kernels run at their own low-precision peak (the matmul term); a remainder
    # for casts only: the term counts FLOPs at the fp32 peak, 15x slower on an H100
    "matmul_lowp": 0.005,
    "elementwise": 1.4,
    "calls": 20e-6,
    "tp_calls": 20e-6,
    "comm_tp": 1.25,
    "comm_pp": 1.25,
    "pp_hops": 20e-6,
    "dp_calls": 20e-6,
    "comm_dp0": 0.4,
    "comm_dp1": 0.6,
    "comm_dp2": 0.5,
    "comm_dp3": 0.6,
    "optimizer": 1.4,
    "opt_tensors": 5e-6,
    "opt_dtensors": 20e-6,
    "step": 5e-3,
}


# priors for CPU ranks over gloo (the `local` cluster, measured rates): matmuls near the
# measured peak, per-layer interpreter overhead in the 100s of microseconds and milliseconds
# per tensor-parallel layer (DTensor dispatch, blocking collectives) and pipeline hop,
# collectives that run beside compute only as far as gloo's worker threads allow
CPU_PRIOR: dict[str, float] = {
    **GPU_PRIOR,
    "matmul": 1.3,
    "matmul_small": 1.3 * 32,
    "matmul_lowp": 0.3,  # CPU bf16 under autocast: casts, and kernels short of their peak
    "calls": 300e-6,
    "tp_calls": 3e-3,
    "pp_hops": 2e-3,
    "dp_calls": 1e-3,
    "opt_tensors": 50e-6,
    "opt_dtensors": 500e-6,
    "comm_dp0": 0.8,
    "comm_dp1": 0.9,
    "comm_dp2": 0.9,
    "comm_dp3": 0.9,
    "step": 2e-3,
}


@dataclass(frozen=True)
class Coefficients:
    values: dict[str, float] = field(default_factory=lambda: dict(GPU_PRIOR))
    source: str = "prior"  # "prior", or what they were fitted to

    def __post_init__(self) -> None:
        missing = set(FEATURES) - set(self.values)
        assert not missing, f"coefficients lack {sorted(missing)}"


def prior_for(cluster: Cluster) -> Coefficients:
    if cluster.backend == "gloo":
        return Coefficients(dict(CPU_PRIOR), "prior (CPU ranks, gloo)")
    return Coefficients(dict(GPU_PRIOR), "prior (GPU, datasheet rates)")


@dataclass(frozen=True)
class StepPrediction:
    step_time_s: float
    parts: dict[str, float]  # seconds per feature
    tokens_per_s: float


def predict(cfg: RunConfig, cluster: Cluster, coeffs: Coefficients) -> StepPrediction:
    x = features(cfg, cluster)
    parts = {k: coeffs.values[k] * x[k] for k in FEATURES}
    step = sum(parts.values())
    tokens = cfg.train.global_batch * cfg.model.seq_len
    return StepPrediction(step, parts, tokens / step)


@dataclass(frozen=True)
class Fit:
    coeffs: Coefficients
    residuals: list[float]  # relative error of each measured step, after the fit

    @property
    def mape(self) -> float:
        return float(np.mean(np.abs(self.residuals))) if self.residuals else float("nan")


def _bounded_lstsq(a: np.ndarray, b: np.ndarray, *, floor: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= its floor (a part is never free): coefficients
    that fall below it are held there and the rest refitted, until none does."""
    held = np.zeros(len(floor), dtype=bool)
    while True:
        theta = floor.copy()
        free = ~held
        rest = b - a[:, held] @ floor[held]
        theta[free], *_ = np.linalg.lstsq(a[:, free], rest, rcond=None)
        low = free & (theta < floor)
        if not low.any():
            return theta
        held |= low


# how much a measured part weighs in the fit against the total step time (both relative to
# the step): enough that each group of coefficients follows its own part
# (bench/planner_accuracy.py compares the held-out figures at other weights)
PART_WEIGHT = 4.0


def fit(
    measured: list[tuple[RunConfig, float]],
    cluster_of: Callable[[RunConfig], Cluster],
    *,
    prior: Coefficients,
    prior_weight: float = 0.05,
    source: str = "fit",
    parts: list[dict[str, float] | None] | None = None,
    part_weight: float = PART_WEIGHT,
) -> Fit:
    """Coefficients that best explain ``measured`` (config, step seconds), each config on the
    cluster it was measured on (``cluster_of``); with ``parts`` (per step, its measured parts,
    ``tuner.perf.parts.PARTS``, or None), each part as well."""
    rows = np.array([[features(c, cluster_of(c))[k] for k in FEATURES] for c, _ in measured])
    times = np.array([s for _, s in measured])
    part_rows = None
    if parts is not None:
        part_rows = [
            (_part_matrix(c, cluster_of(c)), _part_vector(p)) if p else None
            for (c, _), p in zip(measured, parts, strict=True)
        ]
    return fit_rows(
        rows,
        times,
        prior=prior,
        prior_weight=prior_weight,
        source=source,
        parts=part_rows,
        part_weight=part_weight,
    )


def _part_matrix(cfg: RunConfig, cluster: Cluster) -> np.ndarray:
    shares = split(cfg, cluster)
    return np.array([[shares[p][k] for k in FEATURES] for p in PARTS])


def _part_vector(measured_parts: dict[str, float]) -> np.ndarray:
    return np.array([measured_parts[p] for p in PARTS])


def fit_rows(
    rows: np.ndarray,
    times: np.ndarray,
    *,
    prior: Coefficients,
    prior_weight: float = 0.05,
    source: str = "fit",
    parts: list[tuple[np.ndarray, np.ndarray] | None] | None = None,
    part_weight: float = PART_WEIGHT,
) -> Fit:
    """``fit`` on features already computed: one row per step (FEATURES order); ``parts``:
    per step, (its features' shares of each part, PARTS × FEATURES; the measured parts), or
    None where the step's parts were not measured."""
    theta0 = np.array([prior.values[k] for k in FEATURES])
    a = rows / times[:, None]  # relative residual: (x·θ - t) / t
    b = np.ones(len(times))
    # each measured part, relative to its step's time, like the total
    for measured_parts, t in zip(parts or [None] * len(times), times, strict=True):
        if measured_parts is not None:
            shares, seconds = measured_parts
            a = np.vstack([a, part_weight * shares / t])
            b = np.concatenate([b, part_weight * seconds / t])
    # the prior, per coefficient, relative to its own size: only where a feature is present
    used = rows.any(axis=0)
    reg = np.diag(np.where(used, prior_weight / theta0, 1.0 / theta0))
    a_full = np.vstack([a, reg])
    b_full = np.concatenate([b, reg @ theta0])
    theta = _bounded_lstsq(a_full, b_full, floor=0.05 * theta0)
    residuals = (rows @ theta - times) / times
    values = dict(zip(FEATURES, (float(v) for v in theta), strict=True))
    return Fit(Coefficients(values, source), [float(r) for r in residuals])


def held_out_errors(
    rows: np.ndarray, times: np.ndarray, *, prior: Coefficients, prior_weight: float = 0.05
) -> list[float]:
    """Each step's relative error when the model is fitted to all the others (leave-one-out):
    how far it is off on what it has not seen, which a fit's own residuals understate (with
    fewer steps than coefficients they are zero)."""
    out = []
    for i in range(len(times)):
        keep = np.arange(len(times)) != i
        f = fit_rows(rows[keep], times[keep], prior=prior, prior_weight=prior_weight)
        theta = np.array([f.coeffs.values[k] for k in FEATURES])
        out.append(float(rows[i] @ theta / times[i] - 1))
    return out
