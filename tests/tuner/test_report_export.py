"""The winner's export: config.yaml and overrides.txt give back the RunConfig the sweep
launched, and the DeepSpeed and torchtitan files say the same layout (or why they cannot)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import optuna
import pytest
import tomllib
from optuna.trial import TrialState

from engine.config import RunConfig
from engine.units import GIB
from tests.tuner.report_helpers import _add, _p
from tuner.config import load, replace_keys
from tuner.layout_name import layout_name
from tuner.report import write_report
from tuner.report.export_best import BEST_DIR
from tuner.report.frameworks import deepspeed_config, to_toml, torchtitan_config
from tuner.resume import FIXED_ATTR
from tuner.study import base_overrides, fixed_settings

SEARCHED = ["parallel.dp", "train.micro_batch", "train.precision", "parallel.tp"]
TYPED = ["model=tiny", "train.global_batch=16", "train.lr=0.001", "parallel.zero=2"]


def _sweep() -> tuple[optuna.Study, RunConfig]:
    """A sweep as the tuner records it: fixed settings and base overrides from a real config."""
    cfg = load(TYPED)
    s = optuna.create_study(direction="maximize", study_name="export")
    s.set_user_attr(FIXED_ATTR, json.loads(json.dumps(fixed_settings(cfg, SEARCHED))))
    s.set_user_attr("base_overrides", base_overrides(cfg, SEARCHED))
    s.set_user_attr("objectives", ["tokens_per_s"])
    _add(s, TrialState.COMPLETE, _p(1, 4), tps=900.0, mem=GIB)
    _add(s, TrialState.COMPLETE, _p(2, 2, "fp16"), tps=1500.0, mem=GIB)
    _add(s, TrialState.COMPLETE, {**_p(1, 8), "parallel.tp": 2}, tps=1200.0, mem=GIB)
    return s, replace_keys(cfg.run, _p(2, 2, "fp16"))


def test_best_folder_reproduces_the_launched_run(tmp_path: Path) -> None:
    study, expected = _sweep()
    write_report(study, tmp_path)
    best = tmp_path / BEST_DIR
    names = sorted(p.name for p in best.iterdir())
    assert names == [
        "NOTES.md",
        "config.yaml",
        "deepspeed.json",
        "overrides.txt",
        "torchtitan.toml",
    ]
    # the overlay, composed the way NOTES.md says, is the run the sweep launched
    composed = load([f"hydra.searchpath=[file://{tmp_path}]", "+best=config"]).run
    assert composed == expected
    # and so is the overrides line (what the report's reproduce command runs)
    line = (best / "overrides.txt").read_text().strip()
    assert load(shlex.split(line)).run == expected
    notes = (best / "NOTES.md").read_text()
    assert layout_name(expected, also=SEARCHED) in notes and "+best=config" in notes
    assert "fp16 with dynamic loss scaling has no torchtitan setting" in notes
    ds = json.loads((best / "deepspeed.json").read_text())
    assert ds["fp16"]["enabled"] and ds["zero_optimization"] == {"stage": 2}
    assert ds["optimizer"]["params"]["lr"] == 0.001
    tt = tomllib.loads((best / "torchtitan.toml").read_text())
    assert tt["parallelism"]["data_parallel_shard_degree"] == 2
    assert tt["parallelism"]["fsdp_reshard_after_forward"] == "never"


def test_no_best_folder_without_a_completed_trial(tmp_path: Path) -> None:
    s = optuna.create_study()
    _add(s, TrialState.FAIL, {"parallel.dp": 1}, fail_reason="crash")
    write_report(s, tmp_path)
    assert not (tmp_path / BEST_DIR).exists()


def _cfg(**keys: object) -> RunConfig:
    return replace_keys(RunConfig(), {"train.global_batch": 16, **keys})


def test_deepspeed_mapping() -> None:
    ds, notes = deepspeed_config(
        _cfg(**{"parallel.dp": 2, "parallel.zero": 3, "train.micro_batch": 2})
    )
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 4  # 16 / (2 * 2)
    assert ds["zero_optimization"] == {"stage": 3} and "bf16" not in ds and "fp16" not in ds
    assert "tensor_parallel" not in ds and not any("AutoTP" in n for n in notes)
    ds, notes = deepspeed_config(
        _cfg(
            **{"parallel.tp": 2, "parallel.zero": 3, "parallel.sp": True, "train.precision": "bf16"}
        )
    )
    assert ds["tensor_parallel"] == {"autotp_size": 2} and ds["bf16"] == {"enabled": True}
    assert any("ZeRO stages 0-2" in n for n in notes)
    assert any("Sequence parallelism" in n for n in notes)
    # what a JSON cannot hold is said, with the values
    _, notes = deepspeed_config(
        _cfg(
            **{
                "parallel.pp": 2,
                "parallel.pp_schedule": "interleaved_1f1b",
                "parallel.pp_virtual_stages": 2,
                "train.activation_checkpointing": "full",
            }
        )
    )
    assert any("PipelineModule(num_stages=2)" in n and "interleaved_1f1b" in n for n in notes)
    assert any("Activation checkpointing (full)" in n for n in notes)


@pytest.mark.parametrize(
    ("zero", "replicate", "shard", "reshard"),
    [(0, 4, 1, None), (1, 1, 4, "never"), (2, 1, 4, "never"), (3, 1, 4, None)],
)
def test_torchtitan_data_parallel_mapping(zero, replicate, shard, reshard) -> None:
    tt, notes = torchtitan_config(_cfg(**{"parallel.dp": 4, "parallel.zero": zero}))
    par = tt["parallelism"]
    assert (par["data_parallel_replicate_degree"], par["data_parallel_shard_degree"]) == (
        replicate,
        shard,
    )
    assert par.get("fsdp_reshard_after_forward") == reshard
    assert any("ZeRO-1" in n for n in notes) == (zero == 1)
    assert tt["training"]["local_batch_size"] == 4 and tt["training"]["global_batch_size"] == 16


def test_torchtitan_pipeline_and_toml_round_trip() -> None:
    cfg = _cfg(
        **{
            "parallel.world_size": 8,
            "parallel.dp": 0,
            "parallel.pp": 2,
            "parallel.pp_schedule": "interleaved_1f1b",
            "parallel.pp_virtual_stages": 2,
            "train.micro_batch": 2,
            "train.activation_checkpointing": "selective",
            "train.precision": "bf16",
        }
    )
    tt, notes = torchtitan_config(cfg)
    par = tt["parallelism"]
    assert par["pipeline_parallel_degree"] == 2 and par["data_parallel_replicate_degree"] == 4
    assert par["pipeline_parallel_schedule"] == "Interleaved1F1B"
    assert par["pipeline_parallel_microbatch_size"] == 2
    assert tt["training"]["local_batch_size"] == 4  # the dp rank's share of 16
    assert tt["activation_checkpoint"] == {"mode": "selective", "selective_ac_option": "op"}
    assert tt["training"]["mixed_precision_param"] == "bfloat16"
    assert any("4 stages" in n for n in notes)
    assert tomllib.loads(to_toml(tt, header="a\nb")) == tt


@pytest.mark.parametrize(
    ("precision", "reduce", "param", "said"),
    [
        ("fp32", "fp32", "float32", ()),
        ("bf16", "bf16", "bfloat16", ("reduced in bf16",)),
        ("fp16", "fp32", "bfloat16", ("fp16 with dynamic loss scaling",)),
    ],
)
def test_torchtitan_takes_only_its_literal_dtypes(precision, reduce, param, said) -> None:
    """torchtitan's mixed_precision_param is bfloat16 | float32 and its reduce float32 only:
    what the run did beyond that is said in the notes, never written as an invalid value."""
    tt, notes = torchtitan_config(
        _cfg(
            **{
                "train.precision": precision,
                "train.reduce_dtype": reduce,
                "train.betas": [0.8, 0.9],
            }
        )
    )
    assert tt["training"]["mixed_precision_param"] == param
    assert tt["training"]["mixed_precision_reduce"] == "float32"
    assert (tt["optimizer"]["beta1"], tt["optimizer"]["beta2"]) == (0.8, 0.9)
    for words in said:
        assert any(words in n for n in notes), (words, notes)
    assert not any("reduced in" in n for n in notes) or reduce != "fp32"


def test_a_study_of_other_keys_still_reports(tmp_path: Path) -> None:
    """Fixed settings or parameters this version does not know: the page is written, trials
    are named by their parameters, and no best/ claims to reproduce them."""
    s = optuna.create_study(direction="maximize")
    s.set_user_attr(FIXED_ATTR, {"parallel": {"old_key": 1}})
    s.add_trial(
        optuna.trial.create_trial(
            state=TrialState.COMPLETE,
            values=[5.0],
            params={"parallel.gone": 1},
            distributions={"parallel.gone": optuna.distributions.IntDistribution(1, 2)},
            user_attrs={"result": {"tokens_per_s": 5.0}},
        )
    )
    assert "parallel.gone=1" in write_report(s, tmp_path).read_text()
    assert not (tmp_path / BEST_DIR).exists()
