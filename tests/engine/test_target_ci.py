"""``measure.target_ci``: the rule that ends the timed steps (pure), and a real two-rank run
that ends on the step the rule names, with its profiled window after the last timed step."""

from __future__ import annotations

import pytest

from engine.config import ConfigError
from engine.metrics.stats import median_ci, precise_enough, relative_half_width
from engine.validate import validate
from tests.helpers import run_engine, tiny_config


def test_relative_half_width_is_half_the_interval_over_the_median():
    ci = median_ci([9.0, 10.0, 10.0, 10.0, 10.0, 11.0])  # n = 6: the interval is [min, max]
    assert (ci.low, ci.high, ci.median) == (9.0, 11.0, 10.0)
    assert relative_half_width(ci) == pytest.approx(0.1)


def test_stops_only_with_enough_values_for_full_coverage():
    steady = [10.0] * 20
    assert not precise_enough(steady[:5], target=0.5, min_n=1)  # [min, max] covers < 95%
    assert precise_enough(steady[:6], target=0.5, min_n=1)
    assert not precise_enough(steady[:6], target=0.5, min_n=7)  # the floor the user set
    assert precise_enough(steady[:7], target=0.5, min_n=7)
    assert not precise_enough(steady, target=0.0, min_n=1)  # 0: never stop early


def test_stops_once_the_interval_is_narrow_enough():
    noisy = [9.0, 11.0, 10.0, 9.5, 10.5, 10.0]  # half width 1.0 over median 10.0
    assert not precise_enough(noisy, target=0.09, min_n=6)
    assert precise_enough(noisy, target=0.1, min_n=6)
    # more values narrow the order-statistic interval: the outer ones leave it
    more = noisy + [10.0] * 12
    assert relative_half_width(median_ci(more)) < 0.1 and precise_enough(more, target=0.06, min_n=6)


@pytest.mark.parametrize(
    "key, value", [("target_ci", -0.1), ("target_ci", 2.0), ("min_timed_steps", 0)]
)
def test_invalid_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"measure.{key}"):
        validate(tiny_config(measure={key: value}))


def test_run_ends_on_the_step_the_rule_names(tmp_path):
    target, floor, warm, prof = 1.0, 6, 2, 2
    cfg = tiny_config(
        parallel={"dp": 2},
        train={"steps": 40, "warmup_steps": warm},
        measure={"target_ci": target, "min_timed_steps": floor, "profile_steps": prof},
        device="cpu",
    )
    r = run_engine(cfg, tmp_path)
    timed = r["timed_steps"]
    n = len(timed)
    assert timed == list(range(warm, warm + n)) and not r["timing_includes_profiler"]
    # the profiled window follows the last timed step, and the run ends with it
    assert len(r["step_times_s"]) == warm + n + prof < 40
    assert r["comm_bytes"] and r["breakdown"] is not None
    # the slowest rank's tokens/s, as every rank saw them: first precise enough at the n-th
    samples = [r["tokens_per_step"] / r["step_times_s"][i] for i in timed]
    assert precise_enough(samples, target=target, min_n=floor)
    assert not any(precise_enough(samples[:k], target=target, min_n=floor) for k in range(n))
    assert relative_half_width(median_ci(samples)) <= target
    assert r["tokens_per_s"] == pytest.approx(median_ci(samples).median)
