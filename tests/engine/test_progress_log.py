"""The ranks' progress files: one line per step, the stopwatch's times, while the run goes on."""

from __future__ import annotations

import pytest

from engine.progress_log import read_steps, step_times
from tests.helpers import run_engine, tiny_config


@pytest.mark.slow
def test_every_rank_reports_each_step_time_the_result_holds(tmp_path):
    folder = tmp_path / "progress"
    folder.mkdir()
    cfg = tiny_config(
        parallel={"dp": 2},
        train={"steps": 5, "warmup_steps": 1, "global_batch": 8, "micro_batch": 4},
        progress=str(folder),
    )
    result = run_engine(cfg, tmp_path / "run")
    per_rank = [read_steps(folder, rank) for rank in range(2)]
    assert all(list(r) == list(range(5)) for r in per_rank)
    # a step lasts as long as its slowest rank, in the result as in the progress files
    assert list(step_times(folder, 2).values()) == pytest.approx(result["step_times_s"])
    assert result["config"]["progress"] == str(folder)
