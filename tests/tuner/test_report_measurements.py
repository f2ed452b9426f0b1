"""Report parts built from the measurement details: intervals, collectives, the step-time
breakdown and predicted vs measured memory."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from engine.units import GIB, MIB
from tests.tuner.report_helpers import BASE, _add, _p
from tuner.report import (
    best_trial,
    collective_table,
    indistinguishable_from,
    trials_frame,
    write_report,
)
from tuner.report.measurements import memory_prediction, step_breakdown


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
    assert "Not distinguishable from the best" in html
    assert "dp1 · tp1 · pp1 · mb2 · bf16 · no AC (trial 1)." in html  # named by layout
    # and marked on the leaderboard, the best itself and the distinct one not
    assert html.count("≈ best</span>") == 1


def test_best_trial_communication_table_and_caveats(tmp_path: Path) -> None:
    s = optuna.create_study(storage=None, direction="maximize", study_name="comm")
    s.set_user_attr("objectives", ["tokens_per_s"])
    comm = {
        "all_reduce": {
            "count": 1.0,
            "bytes": 2.0 * MIB,
            "time_s": 0.004,
            "exposed_s": 0.003,
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
            "exposed_ms": 3.0,
            "algbw_GBps": 0.52,
            "busbw_GBps": 0.52,
        }
    ]
    assert notes == [note]
    html = write_report(s, tmp_path).read_text()
    assert "Communication of trial 0" in html and note in html


def _breakdown_attrs(ms: dict[str, float], step_ms: float) -> dict[str, float]:
    out = {f"breakdown_{k}_s": v / 1e3 for k, v in ms.items()}
    out["breakdown_step_s"] = step_ms / 1e3
    return out


def test_step_breakdown_and_memory_prediction_per_measured_trial(tmp_path: Path) -> None:
    s = optuna.create_study(storage=None, direction="maximize", study_name="parts")
    s.set_user_attr("objectives", ["tokens_per_s"])
    parts = {"forward": 10, "backward": 20, "optimizer": 5, "comm_exposed": 4, "bubble": 1}
    mem = {"mem_params_bytes": GIB, "mem_grads_bytes": GIB, "mem_optimizer_bytes": 2 * GIB}
    mem |= {"mem_activations_bytes": 4 * GIB, "predicted_peak_mem_bytes": 8 * GIB}
    c = TrialState.COMPLETE
    _add(
        s,
        c,
        _p(2, 4),
        tps=100.0,
        mem=GIB * 12,
        tensor_peak_bytes=10 * GIB,
        mem_compared_bytes=10 * GIB,
        mem_prediction_compared_to="tensor_peak_bytes",
        **_breakdown_attrs({**parts, "data": 0.5}, 40.6),
        **mem,
    )
    # measured on CUDA: no tensor-only peak, the allocator's peak is the comparison
    _add(
        s,
        c,
        _p(1, 4),
        tps=90.0,
        mem=4 * GIB,
        mem_compared_bytes=4 * GIB,
        mem_prediction_compared_to="peak_mem_bytes",
        **_breakdown_attrs({**parts, "data": 1}, 41),
        **mem,
    )
    # CPU without a profiled step: no tensor peak, so no comparison (never with the whole
    # process's VmHWM in peak_mem_bytes, which includes the runtime)
    _add(
        s,
        c,
        _p(1, 2),
        tps=80.0,
        mem=20 * GIB,
        mem_prediction_compared_to="tensor_peak_bytes",
        **_breakdown_attrs({**parts, "data": 1}, 41),
        **mem,
    )
    _add(s, TrialState.FAIL, _p(4, 4), fail_reason="oom")
    df = trials_frame(s)

    steps = step_breakdown(df)
    # named by layout; the failed one has none
    assert steps["trial"].tolist() == df.loc[[0, 1, 2], "layout"].tolist()
    assert steps.loc[0, "trial"] == "dp2 · DDP · tp1 · pp1 · mb4 · bf16 · no AC"
    assert steps.loc[0, "backward"] == 20 and steps.loc[0, "data"] == 0.5
    assert steps.loc[0, "step_ms"] == 40.6

    memory = memory_prediction(df)
    assert memory["trial"].tolist() == df.loc[[0, 1], "layout"].tolist()
    assert memory["measured"].tolist() == [10 * 1024, 4 * 1024]  # MiB
    assert memory["predicted"].tolist() == [8 * 1024, 8 * 1024]
    assert memory["error"].tolist() == [-0.2, 1.0]
    assert memory.loc[0, "activations"] == 4 * 1024
    assert memory["compared_to"].tolist() == [
        "tensor peak (CPU, profiler memory events)",
        "allocator peak (CUDA)",
    ]

    page = write_report(s, tmp_path).read_text()
    assert "Where the step time goes" in page and "Memory: predicted vs measured" in page
    assert "measured: tensor peak (CPU, profiler memory events)" in page
    csv = (tmp_path / "trials.csv").read_text().splitlines()[0].split(",")
    for column in ("breakdown_comm_exposed_s", "mem_activations_bytes", "mem_prediction_error"):
        assert column in csv


def test_intervals_show_their_coverage_and_blank_figures_their_reason(tmp_path: Path) -> None:
    s = optuna.create_study(storage=None, direction="maximize", study_name="honest")
    s.set_user_attr("objectives", ["tokens_per_s"])
    why = "no profiled step (measure.profile_steps=0, 2 measured steps)"
    _add(
        s,
        TrialState.COMPLETE,
        _p(2, 4),
        tps=100.0,
        mem=GIB,
        tokens_per_s_ci_low=90.0,
        tokens_per_s_ci_high=110.0,
        tokens_per_s_ci_coverage=0.5,  # two timed steps: [min, max] covers the median half the time
        timing_includes_profiler=True,
        comm_bytes=None,
        not_measured={"comm_bytes": why, "comm_time_s": why},
    )
    page = write_report(s, tmp_path).read_text()
    assert "Throughput interval (50% coverage)" in page and "95%" not in page.split("<body>")[1]
    assert "the timed steps ran under the profiler" in page
    assert f"not measured: {why}" in page
    assert "0.00 MiB" not in page
    df = trials_frame(s)
    assert df.loc[0, "not_measured"] == f"{why}: comm_bytes, comm_time_s"
    assert pd.isna(df.loc[0, "comm_bytes"])
