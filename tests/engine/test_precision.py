"""Mixed precision: loss scaling that every rank agrees on, divergence stops, reduction dtype."""

from __future__ import annotations

import pytest

from engine.runner import EXIT_DIVERGED
from tests.helpers import launch_engine, run_engine, tiny_config

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "parallel",
    [{"dp": 2}, {"dp": 2, "zero": 3}, {"tp": 2}, {"pp": 2}],
    ids=["ddp", "zero3", "tp2", "pp2"],
)
def test_fp16_overflow_on_one_rank_is_skipped_everywhere(tmp_path, parallel):
    cfg = tiny_config(
        parallel=parallel,
        train={"precision": "fp16", "steps": 6, "micro_batch": 2, "loss_scale_growth_interval": 2},
        debug={"overflow_at_step": 3},  # an inf in one gradient of rank 0 only
    )
    out = run_engine(cfg, tmp_path)
    assert out["skipped_steps_per_rank"] == [1] * out["world_size"]
    # 2^16, doubled after steps 0-1, halved at step 3, doubled again after steps 4-5
    assert out["loss_scale"] == 2.0**17
    assert out["status"] == "ok"


def test_fp16_persistent_nan_stops_the_run_as_diverged(tmp_path):
    cfg = tiny_config(
        parallel={"dp": 2},
        train={"precision": "fp16", "steps": 20, "micro_batch": 2},
        debug={"nan_at_step": 2},
    )
    res, logs = launch_engine(cfg, tmp_path)
    assert EXIT_DIVERGED in res.returncodes, logs[-2000:]
    assert "diverged" in logs


@pytest.mark.parametrize("zero", [0, 2])
def test_reduce_dtype_bf16_halves_gradient_traffic(tmp_path, zero):
    def run(reduce_dtype):
        cfg = tiny_config(
            parallel={"dp": 2, "zero": zero},
            train={"precision": "bf16", "steps": 4, "micro_batch": 4, "reduce_dtype": reduce_dtype},
        )
        return run_engine(cfg, tmp_path / reduce_dtype)

    fp32, bf16 = run("fp32"), run("bf16")
    # gradients travel in all-reduce (DDP) or reduce-scatter, which gloo runs as all-reduce;
    # the only other all-reduce is the 4-byte gradient-norm sum
    ratio = bf16["comm"]["all_reduce"]["bytes"] / fp32["comm"]["all_reduce"]["bytes"]
    assert ratio == pytest.approx(0.5, rel=0.01)
    assert abs(bf16["losses"][-1] - fp32["losses"][-1]) < 5e-3
