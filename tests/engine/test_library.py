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


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    """The example runs as a script; make the project importable even without an install."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))


def _losses(tmp_path, nproc: int, *args: str) -> list[float]:
    res = launch([sys.executable, EXAMPLE, *args], nproc=nproc, log_dir=tmp_path, timeout_s=120)
    log = (tmp_path / "rank0.log").read_text()
    assert res.ok, log[-3000:]
    return json.loads(log.strip().splitlines()[-1])["losses"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return _losses(tmp_path_factory.mktemp("one"), 1)


@pytest.mark.parametrize(
    "args",
    [
        ["--zero", "0"],
        ["--zero", "1"],
        ["--zero", "2"],
        ["--zero", "3"],
        ["--tp", "2"],
        ["--pp", "2"],
    ],
    ids=["zero0", "zero1", "zero2", "zero3", "tp2-plan", "pp2-split"],
)
def test_engine_api_on_two_ranks_equals_one_process(tmp_path, one_process, args):
    two = _losses(tmp_path, 2, *args)
    torch.testing.assert_close(two, one_process, rtol=0, atol=1e-5)
    assert one_process[0] != one_process[-1]
