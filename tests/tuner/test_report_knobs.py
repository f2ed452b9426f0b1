"""What each knob does, importances and convergence, checked on the shared ten-trial study."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tests.tuner.report_helpers import _add, _p
from tuner.report import best_trial, convergence, importances, knob_effects, trials_frame
from tuner.report.knobs import MIN_TRIALS_FOR_IMPORTANCE
from tuner.report.sections import topic_groups


def _row(effects: pd.DataFrame, knob: str, value: object) -> pd.Series:
    return effects[(effects["knob"] == knob) & (effects["value"] == value)].iloc[0]


def test_knob_effects_along_the_best_layout_and_over_the_rest(study: optuna.Study) -> None:
    df = trials_frame(study)
    best = best_trial(df)  # trial 9: dp1, mb2, bf16, tp not sampled
    effects = knob_effects(df, best)
    dp1 = _row(effects, "parallel.dp", 1)  # trials 0, 8, 9 (measured, not repeats)
    assert (dp1["n"], dp1["median"], dp1["min"], dp1["max"]) == (3, 1000.0, 500.0, 9000.0)
    assert dp1["at_best"] == 9000.0 and dp1["is_best_value"]
    # dp2 was measured only with other micro-batches: nothing along the best layout
    dp2 = _row(effects, "parallel.dp", 2)
    assert dp2["n"] == 2 and math.isnan(dp2["at_best"]) and dp2["at_best_layout"] == ""
    # mb4 along dp1 · bf16: trial 0; mb8 ran only with tp2 (the best has no tp)
    assert _row(effects, "train.micro_batch", 4)["at_best"] == 1000.0
    assert _row(effects, "train.micro_batch", 1)["at_best"] == 500.0
    assert math.isnan(_row(effects, "train.micro_batch", 8)["at_best"])
    assert _row(effects, "train.micro_batch", 4)["at_best_layout"].startswith("dp1 ·")
    assert effects["knob"].drop_duplicates().tolist() == [
        "parallel.dp",
        "train.micro_batch",
        "train.precision",
        "parallel.tp",
    ]
    assert knob_effects(df, None)["at_best"].isna().all()


def test_importances_need_enough_trials(study: optuna.Study) -> None:
    df = trials_frame(study)
    table, note = importances(study, df)
    assert set(table["param"]) <= {
        "parallel.dp",
        "train.micro_batch",
        "train.precision",
        "parallel.tp",  # sampled in one layout only: scored over it
    }
    assert len(table) >= 2 and table["importance"].sum() == pytest.approx(1.0)
    assert "7 completed layouts" in note
    few = optuna.create_study(direction="maximize")
    for dp in range(1, MIN_TRIALS_FOR_IMPORTANCE):
        _add(few, TrialState.COMPLETE, _p(dp, 2), tps=100.0 * dp)
    table, note = importances(few, trials_frame(few))
    assert table.empty and note.startswith(f"Not computed: {MIN_TRIALS_FOR_IMPORTANCE - 1}")


def test_convergence_against_trial_time() -> None:
    s = optuna.create_study(direction="maximize")
    for tps, wall in [(100.0, 10.0), (None, 5.0), (300.0, 20.0), (300.0, 1.0), (200.0, 4.0)]:
        state = TrialState.COMPLETE if tps else TrialState.FAIL
        _add(s, state, _p(1, 2), tps=tps, duration_s=wall)
    _add(s, TrialState.COMPLETE, _p(1, 2), tps=900.0, duration_s=99.0, duplicate_of=0)
    conv = convergence(trials_frame(s))
    # the failed trial's time counts, the repeat's does not (it ran nothing)
    assert conv["elapsed_s"].tolist() == [10.0, 35.0, 36.0, 40.0]
    assert conv["best_so_far"].tolist() == [100.0, 300.0, 300.0, 300.0]
    assert conv["new_best"].tolist() == [True, True, False, False]  # a tie finds nothing new
    low = convergence(trials_frame(s), maximize=False)
    assert low["best_so_far"].tolist() == [100.0, 100.0, 100.0, 100.0]


def test_all_trials_table_is_grouped_by_topic(study: optuna.Study) -> None:
    df = trials_frame(study)
    groups = topic_groups(df)
    assert list(groups)[:2] == ["Trial", "Searched parameters"]
    assert "Communication" in groups and "comm_exposed_s" in groups["Communication"]
    # every column shown somewhere, each group led by the trial and its layout
    shown = {c for cols in groups.values() for c in cols}
    assert shown == set(df.columns)
    assert all(cols[:2] == ["number", "layout"] for cols in groups.values())
