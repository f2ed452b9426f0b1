from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest

from engine.config import PP_SCHEDULE_CLASSES, ConfigError, RunConfig
from engine.parallel import pipeline
from engine.parallel.pipeline import AVAILABLE
from engine.validate import installed_torch, schedules_in_torch, validate
from tests.helpers import tiny_config

# the module, not engine's `validate` function of the same name
validate_mod = importlib.import_module("engine.validate")


def test_defaults_are_valid():
    validate(RunConfig())


@pytest.mark.parametrize(
    ("sections", "words"),
    [
        ({"parallel": {"dp": 0}}, ["parallel.dp", "0"]),
        ({"parallel": {"dp": 3}}, ["train.global_batch", "parallel.dp=3"]),
        (
            {"parallel": {"tp": 3}, "train": {"micro_batch": 8}},
            ["parallel.tp`=3", "model.n_heads=4", "[1, 2, 4]"],
        ),
        ({"parallel": {"sp": True}}, ["parallel.sp=true", "parallel.tp=1"]),
        ({"parallel": {"zero": 2}}, ["parallel.zero`=2", "parallel.dp=1"]),
        (
            {"parallel": {"dp": 2, "zero": 1, "fsdp_unit_layers": 0}},
            ["parallel.fsdp_unit_layers`=0", "parallel.zero=1", "zero 2 or 3"],
        ),
        ({"parallel": {"fsdp_unit_layers": -1}}, ["parallel.fsdp_unit_layers", "-1"]),
        (
            {"parallel": {"zero": 1, "dp": 2, "tp": 2}},
            ["parallel.zero=1", "valid: parallel.zero 0, 2 or 3"],
        ),
        (
            {"parallel": {"pp": 8}, "train": {"micro_batch": 1}},
            ["8 pipeline stages", "model.n_layers=4"],
        ),
        (
            {"parallel": {"pp": 2}, "train": {"micro_batch": 8}},
            ["1f1b", "at least 2 micro-batches", "= 1"],
        ),
        (
            {"parallel": {"pp": 2, "pp_virtual_stages": 2}, "train": {"micro_batch": 2}},
            ["parallel.pp_virtual_stages`=2", "interleaved_1f1b"],
        ),
        ({"parallel": {"pp_schedule": "zigzag"}}, ["parallel.pp_schedule", "zigzag", "gpipe"]),
        (
            {"parallel": {"dp": 2, "pp": 2, "zero": 3, "pp_schedule": "zbv_zero_bubble"}},
            ["parallel.pp_schedule`=zbv_zero_bubble", "parallel.zero=3", "1f1b"],
        ),
        (
            {
                "parallel": {"pp": 2, "pp_schedule": "interleaved_1f1b", "pp_virtual_stages": 4},
                "train": {"micro_batch": 1},
            },
            ["8 pipeline stages"],
        ),
        (
            {"parallel": {"world_size": 4, "dp": 2}},
            ["= 2", "parallel.world_size=4", "parallel.dp=0"],
        ),
        ({"parallel": {"world_size": 4, "dp": 0, "tp": 3}}, ["does not divide", "[1, 2, 4]"]),
        (
            {"train": {"activation_checkpointing": "some"}},
            ["train.activation_checkpointing", "selective"],
        ),
        ({"train": {"precision": "fp8"}}, ["train.precision", "fp8", "bf16"]),
        ({"train": {"compile": "all"}}, ["train.compile", "all", "blocks"]),
        (
            {"train": {"compile": "blocks", "warmup_steps": 0}},
            ["train.compile=blocks", "train.warmup_steps=0"],
        ),
        (
            {
                "parallel": {"pp": 2, "pp_schedule": "zbv_zero_bubble"},
                "train": {"compile": "model"},
            },
            ["train.compile=model", "zbv_zero_bubble", "valid with compile: gpipe"],
        ),
        ({"train": {"micro_batch": 3}}, ["train.micro_batch=3", "valid train.micro_batch"]),
        ({"train": {"steps": 2, "warmup_steps": 2}}, ["train.steps", "train.warmup_steps"]),
        ({"model": {"n_heads": 3}}, ["model.d_model", "model.n_heads"]),
        ({"model": {"mlp": "relu"}}, ["model.mlp", "relu", "swiglu"]),
        ({"device": "tpu"}, ["device", "tpu", "cuda"]),
        ({"debug": {"comm_delay_ms": -5}}, ["debug.comm_delay_ms", "-5", "[0, 10000]"]),
        ({"debug": {"comm_delay_ms": 20}}, ["debug.comm_delay_ms", "single process"]),
        (
            {"parallel": {"dp": 2}, "debug": {"comm_delay_ms": 20}, "device": "cuda"},
            ["debug.comm_delay_ms", "CPU only", "device=cuda"],
        ),
        ({"measure": {"count_calls": True}}, ["measure.count_calls", "single process"]),
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


def test_dp_zero_is_derived_from_the_world_size():
    cfg = validate(
        tiny_config(parallel={"world_size": 4, "dp": 0, "tp": 2}, train={"micro_batch": 2})
    )
    assert (cfg.parallel.dp, cfg.parallel.tp, cfg.parallel.n_ranks) == (2, 2, 4)


@pytest.mark.parametrize(
    "parallel",
    [{"dp": 2, "zero": z} for z in (0, 1, 2, 3)]
    + [{"tp": 2, "sp": sp} for sp in (False, True)]
    + [
        {
            "pp": 2,
            "pp_schedule": s,
            "pp_virtual_stages": 2 if s.startswith(("interleaved", "looped")) else 1,
        }
        for s in AVAILABLE  # every schedule the engine offers with this torch
    ]
    + [{"dp": 2, "tp": 2, "zero": 3}, {"dp": 2, "pp": 2}, {"tp": 2, "pp": 2}],
)
def test_every_supported_layout_validates_on_tiny(parallel):
    validate(tiny_config(parallel=parallel, train={"micro_batch": 1}))


def test_json_round_trip():
    cfg = tiny_config(parallel={"dp": 2}, train={"precision": "bf16"})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def _pp2(schedule: str) -> RunConfig:
    return tiny_config(parallel={"pp": 2, "pp_schedule": schedule}, train={"micro_batch": 1})


def test_a_schedule_newer_than_the_installed_torch_is_refused_before_launch(monkeypatch):
    monkeypatch.setattr(validate_mod, "installed_torch", lambda: "2.8.0+cu128")
    with pytest.raises(ConfigError) as err:
        validate(_pp2("dualpipev"))
    for word in ("pp_schedule=dualpipev", "torch >= 2.9", "ScheduleDualPipeV", "2.8.0+cu128"):
        assert word in str(err.value), str(err.value)
    assert "dualpipev" not in str(err.value).partition("valid here:")[2]
    validate(_pp2("zbv_zero_bubble"))  # 2.6 has it
    validate(tiny_config(parallel={"pp_schedule": "dualpipev"}))  # pp=1 runs no schedule


def test_a_schedule_class_missing_from_torch_is_refused_by_name(monkeypatch):
    from torch.distributed.pipelining import schedules

    # a torch.distributed.pipelining.schedules without ScheduleDualPipeV, as before 2.9
    older = SimpleNamespace(
        **{
            n: getattr(schedules, n)
            for n in PP_SCHEDULE_CLASSES.values()
            if n != "ScheduleDualPipeV"
        }
    )
    monkeypatch.setattr(pipeline, "SCHEDULES", pipeline.schedule_table(older))
    assert pipeline.SCHEDULES["zbv_zero_bubble"].cls is schedules.ScheduleZBVZeroBubble
    with pytest.raises(ConfigError, match=r"dualpipev needs torch >= 2\.9"):
        pipeline.make_schedule("dualpipev", [], n_microbatches=2, loss_fn=None)


def test_the_torch_release_table_matches_the_installed_torch():
    assert schedules_in_torch(installed_torch()) == AVAILABLE
