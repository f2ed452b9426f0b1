from __future__ import annotations

import random
import statistics

import pytest

from engine.metrics.stats import median_ci


def test_order_statistic_interval_and_its_exact_coverage():
    ci = median_ci([float(x) for x in range(1, 21)])
    assert (ci.low, ci.high, ci.median) == (6.0, 15.0, 10.5)
    assert ci.coverage == pytest.approx(0.9586, abs=1e-4)  # 1 - 2 P(Bin(20, .5) <= 5)
    few = median_ci([3.0, 1.0, 2.0])
    assert (few.low, few.high) == (1.0, 3.0) and few.coverage == pytest.approx(0.75)


def test_interval_covers_the_median_of_a_skewed_distribution_95_percent_of_the_time():
    rng = random.Random(0)
    true_median = statistics.median(rng.lognormvariate(0, 1) for _ in range(200_000))
    trials = 3000
    hits = sum(
        (c := median_ci([rng.lognormvariate(0, 1) for _ in range(16)])).low <= true_median <= c.high
        for _ in range(trials)
    )
    assert 0.94 <= hits / trials <= 0.99


def test_cv_is_stdev_over_mean():
    ci = median_ci([1.0, 2.0, 3.0, 4.0])
    assert ci.cv == pytest.approx(statistics.stdev([1, 2, 3, 4]) / 2.5)
