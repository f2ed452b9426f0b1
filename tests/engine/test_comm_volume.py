"""Measured communication bytes per step equal the analytic volume (metrics/analytic.py)."""

from __future__ import annotations

import pytest

from tests.helpers import run_engine, tiny_config

pytestmark = pytest.mark.slow

LLAMA = {"mlp": "swiglu", "norm": "rmsnorm", "position": "rope", "bias": False}
# id -> (parallel, micro-batch, train overrides, model overrides)
LAYOUTS = {
    "ddp-accumulate": ({"dp": 2}, 2),
    "zero1": ({"dp": 2, "zero": 1}, 4),
    "zero2-accumulate": ({"dp": 2, "zero": 2}, 2),
    "zero3-accumulate": ({"dp": 2, "zero": 3}, 2),
    "tp2": ({"tp": 2}, 4),
    "pp2-1f1b": ({"pp": 2}, 2),
    "pp2-gpipe": ({"pp": 2, "pp_schedule": "gpipe"}, 2),
    # low precision: projections' outputs in bf16, norms' outputs and gradients in fp32
    "tp2-sp-bf16-swiglu": ({"tp": 2, "sp": True}, 2, {"precision": "bf16"}, LLAMA),
    "zero2-bf16-reduce-bf16": (
        {"dp": 2, "zero": 2},
        2,
        {"precision": "bf16", "reduce_dtype": "bf16"},
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_measured_bytes_equal_analytic_volume(tmp_path, layout):
    parallel, micro_batch, *extra = LAYOUTS[layout]
    train, model = (*extra, {}, {})[:2]
    cfg = tiny_config(
        parallel=parallel, train={"steps": 5, "micro_batch": micro_batch, **train}, model=model
    )
    out = run_engine(cfg, tmp_path)
    expected = out["comm_bytes_analytic"]
    assert expected, "the layout should be covered by the analytic model"
    measured = {kind: v["bytes"] for kind, v in out["comm"].items()}
    assert set(measured) == set(expected), (measured, expected)
    for kind, value in expected.items():
        assert measured[kind] == pytest.approx(value, rel=0.01), kind
