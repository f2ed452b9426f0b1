"""Engine in one process: the runner's validation, a user module's recipe, one-process equality
with plain PyTorch, and the runner's result for it (no launcher, no process group)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engine.api import Engine, EngineConfig
from engine.config import ConfigError, ModelConfig, ParallelConfig, RunConfig, TrainConfig
from engine.data import SyntheticTokens
from engine.recipe import ModuleRecipe
from engine.validate import validate
from tests.engine.test_api_user_module import SEQ, STEPS, VOCAB, Stage, TinyLM, reference_losses


@pytest.mark.parametrize(
    ("config", "key"),
    [
        (EngineConfig(parallel=ParallelConfig(zero=3)), "parallel.zero"),
        (EngineConfig(train=TrainConfig(steps=2, warmup_steps=2)), "train.steps"),
        (EngineConfig(train=TrainConfig(global_batch=8, micro_batch=3)), "train.global_batch"),
        (EngineConfig(train=TrainConfig(lr=float("nan"))), "train.lr"),
    ],
)
def test_engine_config_is_validated_like_the_runner(config, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Engine(nn.Linear(2, 2), config)


def test_gpt_shape_checks_do_not_apply_to_a_user_module():
    """tp=8 does not divide the GPT section's 4 heads; a user's module has no such section."""
    parallel = ParallelConfig(tp=8, pp=2, pp_schedule="interleaved_1f1b", pp_virtual_stages=4)
    cfg = RunConfig(parallel=parallel)
    with pytest.raises(ConfigError, match=r"parallel\.tp"):
        validate(cfg)
    validate(cfg, model_shape=False)


def test_recipe_arguments_need_a_module():
    with pytest.raises(ConfigError, match="tp_plan"):
        Engine(ModelConfig(), EngineConfig(), tp_plan={"layers.0": None})


def test_blocks_of_a_stage_are_its_own():
    model = TinyLM(layers=4)
    recipe = ModuleRecipe(model, pp_split=Stage, units=list(model.blocks))
    stage = recipe.part(1, 2)
    blocks = recipe.blocks(stage)
    assert [getattr(parent, name) for parent, name in blocks] == list(model.blocks[2:])
    assert all(parent is stage.blocks for parent, _ in blocks)
    with pytest.raises(ConfigError, match="pp_split"):
        ModuleRecipe(model).part(0, 2)


def test_one_process_engine_equals_plain_pytorch_and_reports_runner_figures():
    torch.manual_seed(0)
    model = TinyLM()
    reference = copy.deepcopy(model)
    config = EngineConfig(
        train=TrainConfig(steps=STEPS, warmup_steps=1, global_batch=8, micro_batch=2),
        device="cpu",
    )
    config.measure.profile_steps = 1
    engine = Engine(model, config, shard_units=list(model.blocks))
    data = SyntheticTokens(VOCAB, SEQ, 0, 8)
    losses = []
    for step in range(STEPS):
        rows = data.shard(step, dp_rank=0, dp=1)
        losses.append(engine.train_batch((rows[:, :-1], rows[:, 1:])))
    result = engine.result()
    engine.close()
    # micro-batches of 2 against the whole batch at once: rounding only
    torch.testing.assert_close(
        losses, reference_losses(reference, data, config.train), rtol=0, atol=1e-5
    )
    assert result["losses"] == losses
    assert result["tokens_per_step"] == 8 * SEQ  # positions of token inputs
    assert result["comm"] == {} and result["breakdown"]["forward"] > 0
    assert result["flops_per_token"] is None and "flops_per_token" in result["not_measured"]
