"""Report parts built from the measurement details: intervals and collectives."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from tests.tuner.report_helpers import BASE, GIB, _add, _p
from tuner.report import (
    best_trial,
    collective_table,
    indistinguishable_from,
    trials_frame,
    write_report,
)


def test_trials_whose_throughput_intervals_overlap_the_best_are_flagged(tmp_path: Path) -> None:
    s = optuna.create_study(storage=None, direction="maximize", study_name="ci")
    s.set_user_attr("base_overrides", BASE)
    s.set_user_attr("objectives", ["tokens_per_s"])
    c = TrialState.COMPLETE
    _add(s, c, _p(1, 1), tps=110.0, mem=GIB, tokens_per_s_ci_low=100.0, tokens_per_s_ci_high=120.0)
    _add(s, c, _p(1, 2), tps=105.0, mem=GIB, tokens_per_s_ci_low=90.0, tokens_per_s_ci_high=101.0)
    _add(s, c, _p(1, 4), tps=60.0, mem=GIB, tokens_per_s_ci_low=50.0, tokens_per_s_ci_high=70.0)
    df = trials_frame(s)
    best = best_trial(df)
    assert int(best["number"]) == 0
    assert indistinguishable_from(df, best) == [1]  # 90-101 overlaps 100-120; 50-70 does not
    html = (write_report(s, tmp_path)).read_text()
    assert "Not distinguishable from the best" in html and "trial(s) 1." in html


def test_best_trial_communication_table_and_caveats(tmp_path: Path) -> None:
    s = optuna.create_study(storage=None, direction="maximize", study_name="comm")
    s.set_user_attr("objectives", ["tokens_per_s"])
    comm = {
        "all_reduce": {
            "count": 1.0,
            "bytes": 2.0 * 2**20,
            "time_s": 0.004,
            "algbw_gbps": 0.52,
            "busbw_gbps": 0.52,
        }
    }
    note = "gloo carries out reduce-scatter as an all-reduce"
    _add(s, TrialState.COMPLETE, _p(2, 4), tps=100.0, mem=GIB, comm=comm, comm_notes=[note])
    table, notes = collective_table(s, 0)
    assert table.to_dict("records") == [
        {
            "collective": "all_reduce",
            "count": 1.0,
            "MiB": 2.0,
            "time_ms": 4.0,
            "algbw_GBps": 0.52,
            "busbw_GBps": 0.52,
        }
    ]
    assert notes == [note]
    html = write_report(s, tmp_path).read_text()
    assert "Communication of trial 0" in html and note in html
