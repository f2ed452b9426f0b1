from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from engine.config import ConfigError, RunConfig
from tuner.config import load
from tuner.space import build, fixed_by_command_line, layout_key


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


def test_command_line_value_of_a_searched_key_is_not_searched():
    overrides = [
        "train.precision=fp16",  # searched by the default space: fixed
        "++parallel.dp=2",  # forced set: fixed too
        "train.steps=5",  # not searched: nothing to remove
        "space.train.micro_batch=[2,4]",  # a space override, not a run setting
        "model=tiny",
    ]
    cfg = load(overrides)
    remaining, fixed = fixed_by_command_line(cfg.space, cfg.overrides)
    assert fixed == ["train.precision=fp16", "parallel.dp=2"]
    assert remaining == {"train": {"micro_batch": [2, 4]}}
    assert build(remaining, cfg.run).distributions.keys() == {"train.micro_batch"}
    assert cfg.space["train"]["precision"] == ["fp32", "bf16"]  # the loaded config is untouched


def test_ranges_are_removed_whole():
    space = {"train": {"lr": {"low": 1e-4, "high": 1e-2}, "micro_batch": [1, 2]}}
    remaining, fixed = fixed_by_command_line(space, ["train.lr=0.001", "train.lr.low=1"])
    assert (remaining, fixed) == ({"train": {"micro_batch": [1, 2]}}, ["train.lr=0.001"])


def test_layout_key_merges_idle_knobs_only():
    base = load(["+experiment=layouts"]).run
    one = {"parallel.pp": 1, "parallel.pp_virtual_stages": 1}
    same = layout_key(base, {**one, "parallel.pp_schedule": "gpipe"})
    assert same == layout_key(base, {**one, "parallel.pp_schedule": "interleaved_1f1b"})
    # refused with pp=1 (pruned): must not stand for its feasible twin, which would then never run
    assert same != layout_key(base, {**one, "parallel.pp_virtual_stages": 2})
    space = build(load(["+experiment=layouts"]).space, base)
    # pp=2: every combination distinct; pp=1: the 4 schedules are one run
    assert len(space.distinct_layouts(base)) == space.size // 2 + space.size // 2 // 4
