"""Uncertainty of a measured median, without assuming a distribution.

Step times are skewed (a slow step now and then), so the interval comes from order statistics:
the number of samples below the true median is Binomial(n, 1/2), hence [x_(k), x_(n+1-k)]
covers the median with probability 1 - 2·P(B <= k-1) (e.g. Hollander & Wolfe, Nonparametric
Statistical Methods, ch. 3). With fewer than 6 samples even [min, max] covers less than 95%:
the actual coverage is reported next to the interval.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def _binom_cdf(k: int, n: int) -> float:
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


@dataclass(frozen=True)
class MedianCI:
    median: float
    low: float
    high: float
    coverage: float  # the interval's actual coverage probability
    cv: float  # coefficient of variation of the samples (stdev / mean)
    n: int


def median_ci(values: list[float], confidence: float = 0.95) -> MedianCI:
    if not values:
        raise ValueError("`values` must not be empty.")
    xs, n = sorted(values), len(values)
    k, coverage = 1, 1 - 2 * _binom_cdf(0, n) if n > 1 else 0.0
    while k + 1 <= (n + 1) // 2:  # widen inwards while the coverage still holds
        next_cov = 1 - 2 * _binom_cdf(k, n)
        if next_cov < confidence:
            break
        k, coverage = k + 1, next_cov
    mean = statistics.fmean(xs)
    cv = statistics.stdev(xs) / mean if n > 1 and mean else 0.0
    return MedianCI(statistics.median(xs), xs[k - 1], xs[n - k], coverage, cv, n)


def relative_half_width(ci: MedianCI) -> float:
    """Half the interval's width over the median: 0.05 means the median is known to +-5%."""
    return (ci.high - ci.low) / 2 / ci.median if ci.median else math.inf


def precise_enough(
    values: list[float], *, target: float, min_n: int, confidence: float = 0.95
) -> bool:
    """Whether ``values`` pin their median down to ``target`` (``relative_half_width``) with the
    full ``confidence``: at least ``min_n`` values, and enough of them that the interval's
    coverage reaches ``confidence`` (6 for 95%)."""
    if target <= 0 or len(values) < max(1, min_n):
        return False
    ci = median_ci(values, confidence)
    return ci.coverage >= confidence and relative_half_width(ci) <= target
