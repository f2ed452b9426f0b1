"""The vocabulary padded to a multiple of ``model.vocab_pad_multiple``: what tensor
parallelism may split, and how parameters and FLOPs count it. Parity of padded models with
the single-process run is in test_layouts.py."""

from __future__ import annotations

import dataclasses

import pytest

from engine.config import ConfigError, RunConfig
from engine.metrics.flops import flops_per_token
from engine.metrics.memory_model import predict
from engine.model import count_params
from engine.validate import validate
from tests.engine.presets import preset


def _layout(model: str, **parallel) -> RunConfig:
    cfg = RunConfig(model=preset(model))
    return dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, **parallel))


@pytest.mark.parametrize(
    ("model", "tp"), [("gpt2-small", 2), ("gpt2-small", 4), ("gpt2-medium", 8)]
)
def test_gpt2_shapes_accept_tensor_parallelism(model, tp):
    cfg = validate(_layout(model, tp=tp, sp=True))
    assert cfg.model.padded_vocab_size == 50_304 and cfg.model.padded_vocab_size % tp == 0


def test_gpt2_xl_heads_limit_tensor_parallelism():
    with pytest.raises(ConfigError, match=r"model.n_heads=25 .*divisors up to 64: \[1, 5, 25\]"):
        validate(_layout("gpt2-xl", tp=2))
    # the preset pads its vocabulary to a multiple of 640 so that tp=5 also splits the head
    assert validate(_layout("gpt2-xl", tp=5)).model.padded_vocab_size == 50_560


def test_unsplittable_padded_vocabulary_names_the_fix():
    cfg = _layout("gpt2-xl", tp=5)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_pad_multiple=128))
    with pytest.raises(ConfigError, match=r"padded vocabulary .*=50304 .*vocab_pad_multiple .*640"):
        validate(cfg)


@pytest.mark.parametrize("value", [0, -128, 1.5])
def test_pad_multiple_must_be_positive(value):
    cfg = _layout("tiny")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_pad_multiple=value))
    with pytest.raises(ConfigError, match=r"model\.vocab_pad_multiple"):
        validate(cfg)


def test_padding_counts_in_memory_not_in_model_flops():
    """The padded rows take memory and run in the head's matmul, but do no useful work: the
    memory model counts them, model FLOPs (MFU) count the real vocabulary only."""
    padded = preset("gpt2-small")
    unpadded = dataclasses.replace(padded, vocab_pad_multiple=1)
    assert unpadded.padded_vocab_size == 50_257
    extra = count_params(padded)["total"] - count_params(unpadded)["total"]
    assert extra == count_params(padded)["vocab_padding"] == 2 * 47 * 768
    assert flops_per_token(padded) == flops_per_token(unpadded)
    cfg = RunConfig(model=padded)
    no_pad = RunConfig(model=unpadded)
    assert predict(cfg, 0, "cuda").optimizer - predict(no_pad, 0, "cuda").optimizer == 8 * extra
