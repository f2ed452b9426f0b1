"""The leaderboard, the layout's name and the console's last lines, checked exactly."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from engine.config import RunConfig
from engine.units import GIB
from tests.tuner.report_helpers import _add, _p
from tuner.config import replace_keys
from tuner.progress import Progress, clock_text, duration, final_lines
from tuner.report import exposed_share, layout_name, leaderboard, trials_frame


def _cfg(**keys: object) -> RunConfig:
    return replace_keys(RunConfig(), keys)


@pytest.mark.parametrize(
    ("keys", "name"),
    [
        ({}, "dp1 · tp1 · pp1 · mb4 · fp32 · no AC"),  # alone: no data-parallel method to name
        (
            {"parallel.dp": 2, "parallel.zero": 3, "train.precision": "bf16"},
            "dp2 · ZeRO-3 · tp1 · pp1 · mb4 · bf16 · no AC",
        ),
        ({"parallel.dp": 2}, "dp2 · DDP · tp1 · pp1 · mb4 · fp32 · no AC"),
        # derived dp; sp named only where tp splits; the schedule only with a pipeline
        (
            {"parallel.world_size": 8, "parallel.dp": 0, "parallel.tp": 2, "parallel.sp": True},
            "dp4 · DDP · tp2+SP · pp1 · mb4 · fp32 · no AC",
        ),
        (
            {"parallel.sp": True, "parallel.pp_schedule": "gpipe"},
            "dp1 · tp1 · pp1 · mb4 · fp32 · no AC",
        ),
        (
            {
                "parallel.pp": 2,
                "parallel.pp_schedule": "gpipe",
                "train.activation_checkpointing": "full",
            },
            "dp1 · tp1 · pp2 gpipe · mb4 · fp32 · full AC",
        ),
        (
            {
                "parallel.pp": 2,
                "parallel.pp_schedule": "interleaved_1f1b",
                "parallel.pp_virtual_stages": 2,
            },
            "dp1 · tp1 · pp2 interleaved_1f1b×2 · mb4 · fp32 · no AC",
        ),
        # tp * pp does not divide the world size: dp unknown, the layout is pruned
        (
            {"parallel.world_size": 4, "parallel.dp": 0, "parallel.tp": 3},
            "dp? · tp3 · pp1 · mb4 · fp32 · no AC",
        ),
    ],
)
def test_layout_name(keys: dict[str, object], name: str) -> None:
    assert layout_name(_cfg(**keys)) == name


def test_layout_name_states_other_searched_knobs() -> None:
    cfg = _cfg(**{"train.lr": 0.001, "train.global_batch": 16})
    also = ["parallel.dp", "train.lr", "train.global_batch"]
    assert layout_name(cfg, also=also).endswith("no AC · lr=0.001 · gb=16")


def test_leaderboard_ranks_launched_layouts(study: optuna.Study) -> None:
    board = leaderboard(trials_frame(study))
    # ranked by tokens/s (ties: lower number first); the failed one last, unranked; the
    # repeat (4) and the pruned layout (6) are not on it
    assert board["number"].tolist() == [9, 2, 7, 1, 5, 0, 8, 3]
    assert board["rank"].tolist()[:7] == list(range(1, 8)) and pd.isna(board["rank"].iloc[7])
    assert board["pct_of_best"].iloc[1] == pytest.approx(100 * 2500 / 9000)
    assert board["state"].tolist()[-2:] == ["COMPLETE", "FAIL (oom)"]
    assert board["layout"].iloc[1] == "dp2 · DDP · tp2 · pp1 · mb8 · bf16 · no AC"
    assert board["peak_mem_bytes"].iloc[1] == 6 * GIB and math.isnan(
        board["peak_mem_bytes"].iloc[0]
    )
    assert not board["tied_with_best"].any()  # no intervals: nothing can be said tied


def _interval_study() -> optuna.Study:
    s = optuna.create_study(direction="maximize")
    s.set_user_attr("objectives", ["tokens_per_s"])
    s.set_user_attr("base_overrides", ["model=tiny"])
    for dp, tps, low, high in [
        (1, 100.0, 95.0, 104.0),
        (2, 98.0, 90.0, 99.0),
        (4, 80.0, 78.0, 94.9),
    ]:
        _add(
            s,
            TrialState.COMPLETE,
            _p(dp, 2),
            tps=tps,
            mem=GIB,
            tokens_per_s_ci_low=low,
            tokens_per_s_ci_high=high,
            tokens_per_s_ci_coverage=0.95,
            comm_exposed_s=0.01,
            step_time_s=0.1,
            breakdown_step_s=0.08 if dp == 2 else None,
        )
    return s


def test_ties_and_exposed_share() -> None:
    df = trials_frame(_interval_study())
    board = leaderboard(df)
    assert board["number"].tolist() == [0, 1, 2]
    # 1's interval [90, 99] overlaps the best's [95, 104]; 2's [78, 94.9] does not
    assert board["tied_with_best"].tolist() == [False, True, False]
    # the profiled steps' own step time where they were timed, else the median step time
    assert exposed_share(df).tolist() == pytest.approx([0.1, 0.125, 0.1])


def test_console_names_the_top_three_and_how_to_reproduce(tmp_path: Path) -> None:
    lines = final_lines(_interval_study(), tmp_path / "sweep")
    assert lines[0].startswith("top 3 of 3 measured layouts")
    assert lines[1] == "  1. dp1 · tp1 · pp1 · mb2 · bf16 · no AC  100 tokens/s [95, 104] (95%)"
    assert lines[2].endswith("[90, 99] (95%)  ≈ best") and "≈" not in lines[3]
    assert "+best=config" in lines[4] and str(tmp_path / "sweep") in lines[4]
    assert lines[5].startswith("  or: python -m tuner run model=tiny parallel.dp=1")
    empty = optuna.create_study()
    assert final_lines(empty, tmp_path)[0].startswith("no layout completed")


def _progress(total: int, printed: list[str], clock: Callable[[], float]) -> Progress:
    """Progress of a sweep whose completed trials count, on a clock the test sets."""
    return Progress(
        total,
        "tokens_per_s",
        printed.append,
        base=RunConfig(),
        counts=lambda t: t.state == TrialState.COMPLETE,
        clock=clock,
    )


def test_progress_line_says_elapsed_and_the_rest() -> None:
    s = optuna.create_study(direction="maximize")
    now = [100.0]
    printed: list[str] = []
    progress = _progress(4, printed, lambda: now[0])
    _add(s, TrialState.COMPLETE, _p(1, 4), tps=10.0, duration_s=25.0)
    now[0] = 130.0  # one trial in 30 s: three more take 90 s
    progress.line(s, s.trials[0], "ok")
    assert printed[-1].startswith("[  1/4 30s, ~1m30s left] #0   dp1 · tp1 · pp1 · mb4 · bf16")
    assert duration(3725) == "1h02m" and duration(65) == "1m05s"
    assert clock_text(elapsed_s=5, left_s=None) == "5s"


def test_progress_estimate_on_resume_uses_measured_trials() -> None:
    s = optuna.create_study(direction="maximize")
    _add(s, TrialState.COMPLETE, _p(1, 4), tps=10.0, duration_s=40.0)
    _add(s, TrialState.PRUNED, _p(2, 4))
    printed: list[str] = []
    progress = _progress(3, printed, lambda: 0.0)
    progress.line(s, s.trials[1], "pruned")  # nothing counted yet in this run
    assert printed[-1].startswith("[  1/3 0s, ~1m20s left]")
