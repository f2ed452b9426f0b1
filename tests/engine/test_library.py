"""Library use on a user's own model: the README example, run for real, equals one process."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from engine.launch import launch
from tests.helpers import REPO

pytestmark = pytest.mark.slow
EXAMPLE = str(REPO / "examples" / "custom_model.py")


def _losses(tmp_path, nproc: int, zero: int) -> list[float]:
    res = launch(
        [sys.executable, EXAMPLE, "--zero", str(zero)], nproc=nproc, log_dir=tmp_path, timeout_s=120
    )
    log = (tmp_path / "rank0.log").read_text()
    assert res.ok, log[-3000:]
    return json.loads(log.strip().splitlines()[-1])["losses"]


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_engine_api_data_parallel_equals_one_process(tmp_path, zero):
    one = _losses(tmp_path / "one", 1, 0)
    two = _losses(tmp_path / "two", 2, zero)
    torch.testing.assert_close(two, one, rtol=0, atol=1e-5)
    assert one[0] != one[-1]
