from __future__ import annotations

import pytest

from engine.config import ConfigError, RunConfig
from engine.validate import validate
from tests.helpers import tiny_config


def test_defaults_are_valid():
    validate(RunConfig())


@pytest.mark.parametrize(
    ("sections", "words"),
    [
        ({"parallel": {"dp": 0}}, ["parallel.dp", "0"]),
        ({"parallel": {"dp": 3}}, ["train.global_batch", "parallel.dp=3"]),
        ({"parallel": {"tp": 2}}, ["parallel.tp", "[1]"]),
        ({"train": {"precision": "fp8"}}, ["train.precision", "fp8", "bf16"]),
        ({"train": {"micro_batch": 3}}, ["train.micro_batch=3", "valid train.micro_batch"]),
        ({"train": {"steps": 2, "warmup_steps": 2}}, ["train.steps", "train.warmup_steps"]),
        ({"model": {"n_heads": 3}}, ["model.d_model", "model.n_heads"]),
        ({"model": {"mlp": "relu"}}, ["model.mlp", "relu", "swiglu"]),
        ({"device": "tpu"}, ["device", "tpu", "cuda"]),
    ],
)
def test_invalid_settings_name_key_value_and_valid_choices(sections, words):
    with pytest.raises(ConfigError) as err:
        validate(tiny_config(**sections))
    for word in words:
        assert word in str(err.value)


def test_unknown_key_in_json_config_is_refused():
    data = RunConfig().to_dict()
    data["train"]["stpes"] = 3
    with pytest.raises(ConfigError, match=r"train\.stpes"):
        RunConfig.from_dict(data)


def test_json_round_trip():
    cfg = tiny_config(parallel={"dp": 2}, train={"precision": "bf16"})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
