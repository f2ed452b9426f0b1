"""FSDP2 on gloo reduces gradients with one all-reduce of its flat buffer (engine.parallel.
gloo_reduce): the same losses as one process, and the process group sees all-reduces, not
gloo's reduce-scatter."""

from __future__ import annotations

import pytest
import torch

from engine.parallel.gloo_reduce import ReduceScatter
from tests.helpers import run_engine, tiny_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ReduceScatter is None, reason="this PyTorch has no custom FSDP2 comms"),
]
STEPS = 4
TRAIN = {"steps": STEPS, "global_batch": 8, "warmup_steps": 1}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cfg = tiny_config(train={**TRAIN, "micro_batch": 8})
    return run_engine(cfg, tmp_path_factory.mktemp("ref"))


@pytest.mark.parametrize("zero", [2, 3])
def test_fsdp_gradients_reduced_by_all_reduce_train_as_one_process(reference, tmp_path, zero):
    cfg = tiny_config(
        parallel={"dp": 2, "zero": zero},
        train={**TRAIN, "micro_batch": 4},
        measure={"count_calls": True, "profile_steps": 1},
    )
    result = run_engine(cfg, tmp_path)
    torch.testing.assert_close(result["losses"], reference["losses"], rtol=0, atol=1e-5)
    calls = result["comm_calls"]
    assert calls.get("all_reduce", 0) >= 1 and calls.get("all_gather", 0) >= 1, calls
    assert "reduce_scatter" not in calls, calls
