"""The analytic volumes' bookkeeping (engine/metrics/volumes.py) without processes. Their
agreement with measured bytes is checked on every layout by the contract suite
(tests/engine/test_layouts.py) and test_comm_volume.py."""

from __future__ import annotations

import pytest

from engine.config import PP_SCHEDULES, RunConfig
from engine.metrics.analytic import expected_comm_bytes
from engine.metrics.volumes import collectives, rank_params
from engine.shapes import count_params
from tests.helpers import tiny_config

LLAMA = {"mlp": "swiglu", "norm": "rmsnorm", "position": "rope", "bias": False}


def _cfg(parallel: dict, train: dict | None = None, model: dict | None = None) -> RunConfig:
    return tiny_config(
        parallel=parallel, train={"micro_batch": 2, **(train or {})}, model=model or {}
    )


@pytest.mark.parametrize("schedule", list(PP_SCHEDULES))
@pytest.mark.parametrize("model", [{}, LLAMA], ids=["gpt2", "llama"])
def test_pipeline_ranks_hold_every_parameter_once(schedule, model):
    virtual = 2 if PP_SCHEDULES[schedule] == "loop" else 1
    cfg = _cfg({"pp": 2, "pp_schedule": schedule, "pp_virtual_stages": virtual}, model=model)
    assert sum(rank_params(cfg, r) for r in range(2)) == count_params(cfg.model)["total"]


def test_tensor_parallel_splits_all_but_replicated_parameters():
    cfg, tp2 = _cfg({}), _cfg({"tp": 2})
    m = cfg.model
    replicated = (2 * m.n_layers + 1) * 2 * m.d_model  # every layernorm's weight and bias
    replicated += 2 * m.d_model * m.n_layers  # the row-parallel biases
    replicated += m.padded_vocab_size * m.d_model + m.seq_len * m.d_model  # embeddings
    assert 2 * rank_params(tp2, 0) - rank_params(cfg, 0) == replicated


def test_one_process_communicates_nothing():
    assert collectives(_cfg({})) == []
    assert expected_comm_bytes(_cfg({})) == {}


def test_nccl_scatters_what_gloo_all_reduces():
    cfg = _cfg({"dp": 2, "zero": 3})
    gloo, nccl = expected_comm_bytes(cfg), expected_comm_bytes(cfg, backend="nccl")
    assert nccl["reduce_scatter"] + nccl["all_reduce"] == pytest.approx(gloo["all_reduce"])
    assert nccl["all_gather"] == gloo["all_gather"]


def test_zero3_gathers_twice_what_zero2_does_and_pipelines_gather_once_per_step():
    gathers = {}
    for zero in (2, 3):
        for pp in (1, 2):
            cfg = _cfg({"dp": 2, "pp": pp, "zero": zero}, {"global_batch": 16})
            gathers[zero, pp] = expected_comm_bytes(cfg)["all_gather"]
    assert gathers[3, 1] == 2 * gathers[2, 1]
    # 4 micro-batches: without a pipeline each gathers every parameter; with one, once per step
    assert gathers[2, 1] == pytest.approx(4 * 2 * gathers[2, 2], rel=0.05)


@pytest.mark.parametrize(("unit_layers", "units"), [(1, 5), (2, 3), (3, 3), (0, 1)])
def test_fsdp_units_of_several_layers_move_the_same_bytes_in_fewer_collectives(unit_layers, units):
    per_block = collectives(_cfg({"dp": 2, "zero": 2}))
    grouped = collectives(_cfg({"dp": 2, "zero": 2, "fsdp_unit_layers": unit_layers}))
    for one, other in zip(per_block, grouped, strict=True):
        assert (one.kind, one.bytes) == (other.kind, other.bytes)
    # the tiny model's 4 blocks in groups (the last may be short), plus the root unit
    counts = {c.phase: c.count for c in grouped if c.phase != "step"}  # not the norm's
    assert counts == {"forward": 2 * units, "backward": units}  # gathers for 2 micro-batches


def test_v_schedules_send_nothing_across_their_turn():
    # pp=2 in a V: rank 0 holds stages 0 and 3, rank 1 stages 1 and 2 (the turn: 1 -> 2)
    v = _cfg({"pp": 2, "pp_schedule": "zbv_zero_bubble"})
    loop = _cfg({"pp": 2, "pp_schedule": "interleaved_1f1b", "pp_virtual_stages": 2})
    sends = {
        name: sum(c.count for r in range(2) for c in collectives(cfg, r) if c.kind == "send")
        for name, cfg in (("v", v), ("loop", loop))
    }
    assert sends["v"] == pytest.approx(sends["loop"] * 4 / 6)  # 2 of 3 boundaries, both ways


def test_full_checkpointing_repeats_the_tensor_parallel_forward():
    plain = _cfg({"tp": 2})
    full = _cfg({"tp": 2}, {"activation_checkpointing": "full"})
    fwd = {
        name: sum(c.count for c in collectives(cfg) if c.phase == "forward" and c.group == "tp")
        for name, cfg in (("plain", plain), ("full", full))
    }
    # the attention output's all-reduce again, per block and micro-batch (4); the MLP's, the
    # block's last, is not recomputed
    assert fwd["full"] - fwd["plain"] == plain.model.n_layers * 4


@pytest.mark.parametrize("model", [{}, LLAMA], ids=["gpt2", "llama"])
def test_parameter_tensors_per_stage_match_the_module(model):
    import torch

    from engine.model import GPT
    from engine.shapes import stage_tensors

    cfg = _cfg({}, model=model).model
    with torch.device("meta"):
        module = GPT(cfg)
    whole = stage_tensors(cfg, layers=cfg.n_layers, first=True, last=True)
    assert whole == len(list(module.parameters()))
