from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from engine.config import ConfigError, RunConfig
from tuner.config import load
from tuner.space import build


def test_default_space_is_categorical_and_finite():
    cfg = load([])
    space = build(cfg.space, cfg.run)
    assert set(space.distributions) == {"parallel.dp", "train.micro_batch", "train.precision"}
    assert all(isinstance(d, CategoricalDistribution) for d in space.distributions.values())
    assert space.size == 2 * 3 * 2 == len(space.grid())


def test_ranges_become_int_and_float_distributions():
    space = build(
        {
            "train": {
                "micro_batch": {"low": 1, "high": 8, "step": 1},
                "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            }
        },
        RunConfig(),
    )
    mb, lr = space.distributions["train.micro_batch"], space.distributions["train.lr"]
    assert isinstance(mb, IntDistribution) and (mb.low, mb.high) == (1, 8)
    assert isinstance(lr, FloatDistribution) and lr.log
    assert space.size is None


@pytest.mark.parametrize(
    ("space", "words"),
    [
        ({"train": {"micro_bach": [1, 2]}}, ["space.train.micro_bach", "train.micro_batch"]),
        ({"train": {"precision": ["fp32", "fp8"]}}, ["space.train.precision", "fp8"]),
        ({"parallel": {"dp": [1, "two"]}}, ["space.parallel.dp", "'two'", "int"]),
        ({"parallel": {"dp": [-1, 2]}}, ["space.parallel.dp", "-1"]),
        ({"parallel": {"dp": []}}, ["space.parallel.dp", "at least one"]),
        ({"train": {"lr": {"low": 1.0, "high": 0.1}}}, ["space.train.lr", "low <= high"]),
        ({}, ["space", "empty"]),
    ],
)
def test_bad_spaces_are_refused(space, words):
    with pytest.raises(ConfigError) as err:
        build(space, RunConfig())
    for word in words:
        assert word in str(err.value), str(err.value)


def test_space_from_command_line_override():
    cfg = load(["space.train.micro_batch=[2,4]", "~space.train.precision"])
    space = build(cfg.space, cfg.run)
    assert space.distributions["train.micro_batch"].choices == (2, 4)
    assert "train.precision" not in space.distributions
