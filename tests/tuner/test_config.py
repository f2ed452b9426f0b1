"""Composition through Hydra, and bad input refused with an actionable message."""

from __future__ import annotations

import dataclasses

import pytest

from engine.config import ConfigError, RunConfig
from engine.validate import validate
from tuner.config import CONF_DIR, RUN_SECTIONS, TunerConfig, check_sampler, load


def test_defaults_compose_into_a_valid_run():
    cfg = load([])
    validate(cfg.run)
    assert cfg.run.model.name == "tiny" and cfg.sweep.n_trials >= 1
    assert cfg.sampler["_target_"].startswith("optuna.samplers.")


def test_overrides_reach_the_typed_config():
    cfg = load(["parallel.dp=2", "train.micro_batch=2", "train.precision=bf16", "sweep.name=x"])
    assert (cfg.run.parallel.dp, cfg.run.train.micro_batch) == (2, 2)
    assert cfg.run.train.precision == "bf16" and cfg.sweep.name == "x"


# the presets of other model sources need the key that names the model
SOURCE_KEYS = {
    "hf": ("model.hf_config=conf/model/hf/tiny-llama.json", "hf-tiny-llama"),
    "custom": ("model.factory=tests.engine.factories:tiny_lm", "custom"),
}


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_every_model_preset_is_valid(preset):
    key, name = SOURCE_KEYS.get(preset, ("", preset))
    cfg = load([f"model={preset}", *([key] if key else [])])
    assert cfg.run.model.name == name
    validate(cfg.run)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["train.stepz=3"], ["train.stepz"]),
        (["train.steps=abc"], ["train.steps", "abc", "integer"]),
        (["sweep.n_trials=0"], ["sweep.n_trials", "0", ">= 1"]),
        (["model=gpt5"], ["gpt5", "tiny"]),
        (["model=hf"], ["model.hf_config"]),
        (["model=custom"], ["model.factory"]),
        (["data=tokens"], ["data.path"]),
        (["sweep.objectives=[speed]"], ["sweep.objectives", "speed", "tokens_per_s"]),
        (["sampler=annealing"], ["annealing", "tpe"]),
        (["launcher.timeout_s=-1"], ["launcher.timeout_s", "-1"]),
        (["launcher.timeout_s=nan"], ["launcher.timeout_s", "nan", "finite"]),
        (["parallel.sp=yes"], ["parallel.sp", "yes", "true or false"]),
        (["train.lr=["], ["train.lr=[", "KEY=VALUE"]),
        (["model.init_std=${oc.env:HOME}"], ["model.init_std", "Float"]),
        (["sampler.population_size=4"], ["sampler.population_size", "+sampler.population_size"]),
        (["train.betas=[0.9]"], ["train.betas", "2 numbers"]),
    ],
)
def test_bad_overrides_are_refused_with_the_key(overrides, words):
    with pytest.raises(ConfigError) as err:
        load(overrides)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_sampler_arguments_are_checked_by_creating_the_sampler():
    with pytest.raises(ConfigError) as err:
        check_sampler(load(["+sampler.bogus=1"]))
    assert "\n" not in str(err.value) and "bogus" in str(err.value)
    check_sampler(load(["sampler=nsga2"]))


def test_run_sections_and_their_defaults_come_from_the_engine():
    assert set(RUN_SECTIONS) == {f.name for f in dataclasses.fields(RunConfig)} - {
        "out",
        "progress",
    }
    schema = TunerConfig()
    assert all(getattr(schema, name) == getattr(RunConfig(), name) for name in RUN_SECTIONS)
    # conf/config.yaml and the tiny preset change only the step count of the engine's defaults
    composed = load([]).run
    steps = dataclasses.replace(composed.train, steps=RunConfig().train.steps)
    assert dataclasses.replace(composed, train=steps) == RunConfig()
