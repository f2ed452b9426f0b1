"""Tests for tuner.report's data step, checked exactly (the page: test_report_page.py)."""

from __future__ import annotations

import random
import shlex
from typing import TYPE_CHECKING

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import create_trial

from engine.units import GIB
from tests.tuner.report_helpers import BASE, DISTS, OOM_DETAIL
from tuner.report import (
    METRIC_COLUMNS,
    NOTE_COLUMNS,
    PARTIAL_COLUMNS,
    best_trial,
    failure_table,
    param_columns,
    pareto_front,
    reproduce_command,
    summarize,
    trials_frame,
)

if TYPE_CHECKING:
    pass

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _nums(df: pd.DataFrame) -> list[int]:
    return [int(n) for n in df["number"]]


def test_trials_frame_columns_and_values(study: optuna.Study) -> None:
    df = trials_frame(study)
    params = ["parallel.dp", "train.micro_batch", "train.precision", "parallel.tp"]
    lead = ["number", "state", "fail_reason", "fail_detail", "duplicate_of", "layout"]
    assert list(df.columns) == [
        *lead,
        *params,
        *METRIC_COLUMNS,
        *NOTE_COLUMNS,
        *PARTIAL_COLUMNS,
        "duration_s",
        "overhead_s",
        "log_dir",
    ]
    assert param_columns(df) == params
    assert _nums(df) == list(range(10))
    assert df["state"].tolist()[2:7] == [
        "COMPLETE",
        "FAIL",
        "COMPLETE",
        "COMPLETE",
        "PRUNED",
    ]
    assert df.loc[3, "fail_reason"] == "oom" and df.loc[3, "fail_detail"] == OOM_DETAIL
    assert df.loc[4, "duplicate_of"] == 1 and pd.isna(df.loc[1, "duplicate_of"])
    assert df.loc[2, "parallel.tp"] == 2 and df["parallel.tp"].isna().sum() == 9
    assert df.loc[6, "parallel.dp"] == 3 and pd.isna(df.loc[6, "train.micro_batch"])
    assert df.loc[8, "peak_mem_bytes"] == GIB and pd.isna(df.loc[9, "peak_mem_bytes"])
    assert df.loc[0, "mfu"] == pytest.approx(0.21) and df["final_loss"].isna().all()
    assert df.loc[0, "duration_s"] == 12.5 and df.loc[3, "log_dir"] == "/logs/3"


def test_pareto_front_fixture(study: optuna.Study) -> None:
    front = pareto_front(trials_frame(study))
    assert _nums(front) == [8, 1, 2]
    assert front["peak_mem_bytes"].tolist() == [GIB, 3 * GIB, 6 * GIB]


def _naive_front(points: list[tuple[int, float, float]]) -> set[int]:
    """O(n^2) definition: not dominated, and no equal point with a lower number."""
    kept = set()
    for n, x, y in points:
        dominated = any(
            (qx <= x and qy >= y and (qx < x or qy > y)) or (qx == x and qy == y and m < n)
            for m, qx, qy in points
        )
        if not dominated:
            kept.add(n)
    return kept


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_definition(seed: int) -> None:
    rng = random.Random(seed)
    # Small integer grids force many ties in x, in y, and in both.
    points = [(n, float(rng.randint(1, 6)), float(rng.randint(1, 6))) for n in range(40)]
    df = pd.DataFrame(
        {
            "number": [p[0] for p in points],
            "state": ["COMPLETE"] * 40,
            "duplicate_of": pd.array([None] * 40, dtype="Int64"),
            "peak_mem_bytes": [p[1] for p in points],
            "tokens_per_s": [p[2] for p in points],
        }
    )
    front = pareto_front(df)
    assert set(_nums(front)) == _naive_front(points)
    assert front["peak_mem_bytes"].is_monotonic_increasing
    assert front["tokens_per_s"].is_monotonic_increasing


def test_pareto_front_other_axes_and_empty(study: optuna.Study) -> None:
    df = trials_frame(study)
    # Minimise step time, maximise MFU: trial 2 (0.2 s, 0.5) dominates 0 and 1.
    assert _nums(pareto_front(df, x="step_time_s", y="mfu")) == [2]
    assert pareto_front(df[df["state"] != "COMPLETE"]).empty


def test_best_trial(study: optuna.Study) -> None:
    df = trials_frame(study)
    assert int(best_trial(df)["number"]) == 9
    # Trials 2 and 7 tie on throughput once 9 is gone: the lower number wins.
    assert int(best_trial(df[df["number"] != 9])["number"]) == 2
    assert int(best_trial(df, metric="peak_mem_bytes", maximize=False)["number"]) == 8
    assert best_trial(df[df["state"] == "FAIL"]) is None


def test_reproduce_command(study: optuna.Study) -> None:
    df = trials_frame(study)
    params = param_columns(df)
    cmd = reproduce_command(df.loc[2], params=params, base_overrides=BASE)
    assert cmd == (
        "python -m tuner run model=tiny train.global_batch=8 train.steps=6 "
        "parallel.dp=2 train.micro_batch=8 train.precision=bf16 parallel.tp=2"
    )
    # A parameter the trial did not sample is left out rather than printed as nan.
    cmd1 = reproduce_command(df.loc[1], params=params, base_overrides=[])
    assert cmd1 == "python -m tuner run parallel.dp=2 train.micro_batch=4 train.precision=bf16"


def test_reproduce_command_float_widened_ints() -> None:
    row = pd.Series(
        {"a.n": 2.0, "a.lr": 0.0003, "a.flag": np.True_, "a.name": "x y", "a.m": np.nan}
    )
    cmd = reproduce_command(
        row, params=["a.n", "a.lr", "a.flag", "a.name", "a.m"], base_overrides=[]
    )
    # The shell hands Hydra one token per override, with Hydra's own quotes around the space.
    assert shlex.split(cmd) == [
        *["python", "-m", "tuner", "run"],
        "a.n=2",
        "a.lr=0.0003",
        "a.flag=true",
        "a.name='x y'",
    ]


def test_failure_table(study: optuna.Study) -> None:
    failed = failure_table(trials_frame(study))
    assert _nums(failed) == [3, 6]
    assert failed["state"].tolist() == ["FAIL", "PRUNED"]
    assert failed["fail_reason"].tolist() == ["oom", "infeasible"]
    assert failed["log_dir"].tolist() == ["/logs/3", "/logs/6"]
    assert "parallel.dp" in failed.columns and "tokens_per_s" not in failed.columns


def test_summarize(study: optuna.Study) -> None:
    summary = summarize(study)
    assert summary.sweep_name == "tiny <dp> sweep"
    assert summary.state_counts == {"COMPLETE": 8, "FAIL": 1, "PRUNED": 1}
    assert summary.n_trials == 10
    assert summary.n_distinct_configs == 9  # trial 4 repeats trial 1
    assert summary.objectives == ("tokens_per_s",) and summary.directions == ("maximize",)
    assert summary.best_number == 9
    assert summary.best_command == (
        "python -m tuner run model=tiny train.global_batch=8 train.steps=6 "
        "parallel.dp=1 train.micro_batch=2 train.precision=bf16"
    )


def test_summarize_uses_first_objective_and_its_direction() -> None:
    s = optuna.create_study(storage=None, directions=["minimize", "maximize"])
    s.set_user_attr("objectives", ["peak_mem_bytes", "tokens_per_s"])
    for dp, (mem, tps) in enumerate([(2 * GIB, 300.0), (GIB, 100.0), (3 * GIB, 900.0)], start=1):
        s.add_trial(
            create_trial(
                values=[float(mem), tps],
                params={"parallel.dp": dp},
                distributions={"parallel.dp": DISTS["parallel.dp"]},
                user_attrs={"peak_mem_bytes": mem, "tokens_per_s": tps},
            )
        )
    summary = summarize(s)
    assert summary.directions == ("minimize", "maximize")
    assert (summary.best_metric, summary.best_maximize, summary.best_number) == (
        "peak_mem_bytes",
        False,
        1,
    )
    assert summary.best_command == "python -m tuner run parallel.dp=2"
    assert summary.n_distinct_configs == 3
