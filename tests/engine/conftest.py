from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import run_engine, tiny_config


@pytest.fixture(scope="session")
def zero3_checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 2-rank zero-3 checkpoint at step 4 (its folder), and the run's final weights.
    Read-only: a test that damages a checkpoint copies it first."""
    tmp = tmp_path_factory.mktemp("zero3_checkpoint")
    cfg = tiny_config(
        parallel={"dp": 2, "zero": 3},
        train={"global_batch": 8, "warmup_steps": 1, "steps": 4, "micro_batch": 4},
        checkpoint={"dir": str(tmp / "ckpt"), "every": 4},
        debug={"dump_params": str(tmp / "params.pt")},
    )
    run_engine(cfg, tmp / "run")
    return tmp / "ckpt", torch.load(tmp / "params.pt")
