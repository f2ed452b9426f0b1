"""Building a rank's model part: on the meta device first, then only this rank's shard is
allocated, with exactly the single-process reference's weights."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from engine.config import ModelConfig, RunConfig
from engine.cpu_malloc import release_freed_memory
from engine.mesh import Mesh
from engine.metrics.memory import status_bytes
from engine.metrics.memory_model import host_build_bytes, predict
from engine.model import GPT, count_params
from engine.parallelize import build_model, build_parts
from engine.units import GIB
from tests.engine.presets import preset
from tests.helpers import tiny_config


def _reset_peak() -> int:
    """Reset the process's resident high-water mark; return the resident bytes now."""
    gc.collect()
    release_freed_memory()  # heap kept by an engine that ran in this process before
    Path("/proc/self/clear_refs").write_text("5")
    return status_bytes("VmRSS")


def _peak_rise(before: int) -> int:
    return status_bytes("VmHWM") - before


def _pipeline(model: ModelConfig, pp: int) -> RunConfig:
    return RunConfig.from_dict({"model": vars(model), "parallel": {"pp": pp}})


def test_llama_7b_pipeline_builds_on_meta_without_memory():
    """Every rank of a pp=8 llama-7b layout builds its stage through the engine's own path on
    the meta device: shapes and counts are the model's, and the host holds none of its 27 GB."""
    cfg = _pipeline(preset("llama-7b"), 8)
    reference = {}
    with torch.device("meta"):
        for name, p in GPT(cfg.model).named_parameters():
            reference[name] = p.shape
    before = _reset_peak()
    seen: dict[str, torch.Size] = {}
    per_stage = []
    for pp_rank in range(8):
        mesh = Mesh(8, 1, 1, pp_rank, 0, 0, None)
        (stage_id, part), *rest = build_parts(cfg, mesh, torch.device("meta"))
        assert stage_id == pp_rank and not rest
        names = dict(part.named_parameters())
        assert all(p.is_meta for p in names.values())
        assert not set(names) & set(seen)  # no parameter on two stages
        seen.update({n: p.shape for n, p in names.items()})
        per_stage.append(sum(p.numel() for p in names.values()))
    rise = _peak_rise(before)
    assert seen == reference
    assert sum(per_stage) == count_params(cfg.model)["total"] == 6_738_415_616
    # the memory model's parameters per rank are the stages' (its optimizer part is 8 bytes each)
    assert [predict(cfg, rank, "cuda").optimizer // 8 for rank in range(8)] == per_stage
    assert rise < GIB / 4, f"building on meta raised the host peak by {rise / GIB:.2f} GiB"


def test_stage_materialises_only_its_shard():
    """Materialising one gpt2-small pipeline stage on the CPU holds that stage plus one full
    parameter, as the memory model's host figure says, not the whole model."""
    cfg = _pipeline(preset("gpt2-small"), 2)
    full_bytes = 4 * count_params(cfg.model)["total"]
    predicted = host_build_bytes(cfg, 1, "cpu")  # the last stage: 6 blocks, norm, head
    assert predicted < 0.8 * full_bytes
    before = _reset_peak()
    (_, part), *_ = build_parts(cfg, Mesh(2, 1, 1, 1, 0, 0, None), torch.device("cpu"))
    rise = _peak_rise(before)
    shard = 4 * sum(p.numel() for p in part.parameters())
    assert shard == predict(cfg, 1, "cpu").optimizer // 2
    assert predicted * 0.9 < rise < predicted * 1.15, (rise, predicted, full_bytes)
    del part


@pytest.mark.parametrize("schedule", ["1f1b", "interleaved_1f1b", "zbv_zero_bubble"])
@pytest.mark.parametrize("shape", ["gpt", "llama-odd-vocab"])
def test_stages_hold_the_reference_weights(schedule, shape):
    """The union of every rank's stages equals the whole model built in one process."""
    model = {"gpt": {}, "llama-odd-vocab": {"mlp": "swiglu", "norm": "rmsnorm"}}[shape]
    if shape != "gpt":
        model |= {"position": "rope", "bias": False, "vocab_size": 257}
    virtual = 2 if schedule != "1f1b" else 1
    cfg = tiny_config(
        model=model,
        parallel={"pp": 2, "pp_schedule": schedule, "pp_virtual_stages": virtual},
        train={"seed": 7},
    )
    reference = GPT(cfg.model, seed=7)
    merged: dict[str, torch.Tensor] = {}
    for pp_rank in range(2):
        for _, part in build_parts(cfg, Mesh(2, 1, 1, pp_rank, 0, 0, None), torch.device("cpu")):
            merged.update(part.state_dict())
            if part.rope is not None:
                torch.testing.assert_close(part.rope, reference.rope, rtol=0, atol=0)
    expected = reference.state_dict()
    assert sorted(merged) == sorted(expected)
    for name, value in expected.items():
        torch.testing.assert_close(merged[name], value, rtol=0, atol=0, msg=name)
    whole = build_model(cfg, torch.device("cpu"))
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
