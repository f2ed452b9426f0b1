"""The report's figures and page, checked structurally (self-contained, complete)."""

from __future__ import annotations

import csv
import itertools
import os
import re
from pathlib import Path

import optuna
import pandas as pd
import plotly.offline
import pytest
from optuna.trial import TrialState

from engine.units import GIB
from tests.tuner.report_helpers import BASE, OOM_DETAIL, _add
from tuner.report import (
    best_trial,
    param_columns,
    pareto_front,
    reproduce_command,
    summarize,
    throughput_by_trial,
    throughput_vs_memory,
    trials_frame,
    write_report,
)


def test_figures(study: optuna.Study) -> None:
    df = trials_frame(study)
    front = pareto_front(df)
    fig = throughput_vs_memory(df, front)
    points, line = fig.data
    assert len(points.x) == 7  # completed trials with both values, trial 9 has no memory
    assert line.name == "Pareto front" and line.mode == "lines+markers"
    assert list(line.x) == [1024.0, 3072.0, 6144.0]
    assert "MiB" in fig.layout.xaxis.title.text and "tokens/s" in fig.layout.yaxis.title.text
    assert points.error_y.array[0] == pytest.approx(30.0)
    assert points.text[0] == "dp1 · tp1 · pp1 · mb4 · bf16 · no AC"  # named by layout
    assert "parallel.dp=1" in points.hovertext[0] and "trial 0" in points.hovertext[0]

    bars = throughput_by_trial(df)
    shown = [y for trace in bars.data for y in trace.y]
    assert len(set(shown)) == 10  # failed trials keep their slot; a repeated name its number
    assert "dp2 · DDP · tp1 · pp1 · mb4 · bf16 · no AC (#4)" in shown
    fail = next(t for t in bars.data if t.name == "FAIL")
    assert list(fail.x) == [0.0] and list(fail.text) == ["oom"]
    assert list(fail.y) == ["dp1 · tp1 · pp1 · mb8 · fp32 · no AC"]


def _assert_self_contained(text: str) -> None:
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.IGNORECASE)
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?(https?:)?//", text, re.IGNORECASE)
    js = plotly.offline.get_plotlyjs()
    assert text.count(js[:300]) == 1 and js in text


def test_write_report(study: optuna.Study, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    path = write_report(study, out)
    assert path == out / "report.html"
    # no temp files left; best/: the winner exported (test_report_export.py)
    assert sorted(os.listdir(out)) == ["best", "report.html", "trials.csv"]

    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(trials_frame(study).columns)
    assert [r["number"] for r in rows] == [str(n) for n in range(10)]
    # Integer columns with gaps must not be widened to "1073741824.0" / "2.0".
    assert rows[8]["peak_mem_bytes"] == str(GIB) and rows[9]["peak_mem_bytes"] == ""
    assert rows[2]["parallel.tp"] == "2" and rows[4]["duplicate_of"] == "1"
    assert rows[3]["fail_detail"] == OOM_DETAIL and rows[1]["tokens_per_s"] == "1800.0"
    back = pd.read_csv(out / "trials.csv")
    assert back["tokens_per_s"].equals(trials_frame(study)["tokens_per_s"])
    # The widened int column read back still gives the same command.
    params = param_columns(back)
    cmd = reproduce_command(back.loc[2], params=params, base_overrides=BASE)
    assert cmd.endswith("train.precision=bf16 parallel.tp=2")

    text = path.read_text(encoding="utf-8")
    _assert_self_contained(text)
    assert "tiny &lt;dp&gt; sweep" in text and "<dp>" not in text
    assert "Best configuration" in text and "Failed and pruned trials" in text
    summary = summarize(study)
    assert f"<pre>{summary.best_command}</pre>" in text
    assert "RuntimeError: &lt;CUDA&gt; out of memory &amp; more" in text and OOM_DETAIL not in text
    assert "infeasible" in text and "/logs/6" in text
    for n in range(10):
        assert f"<td>{n}</td>" in text
    # Eight figures, each once: leaderboard, knob effects, importances, convergence,
    # throughput vs memory, by trial, time breakdown, memory.
    assert text.count('class="plotly-graph-div"') == 8


@pytest.mark.parametrize("states", [[], [TrialState.FAIL, TrialState.PRUNED]])
def test_report_without_completed_trials(states: list[TrialState], tmp_path: Path) -> None:
    s = optuna.create_study(storage=None)
    for state, dp in zip(states, itertools.count(1), strict=False):
        _add(s, state, {"parallel.dp": dp}, fail_reason="crash")
    path = write_report(s, tmp_path)
    text = path.read_text(encoding="utf-8")
    _assert_self_contained(text)
    assert "No trial completed" in text
    df = trials_frame(s)
    assert pareto_front(df).empty and best_trial(df) is None
    assert summarize(s).best_command is None
    header = (tmp_path / "trials.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == [
        "number",
        "state",
        "fail_reason",
        "fail_detail",
        "duplicate_of",
    ]
    assert header[-3:] == ["duration_s", "overhead_s", "log_dir"] and "tokens_per_s" in header
