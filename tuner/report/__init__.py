"""Sweep report: the table of trials (``frame``), data from it (``data``), plotly figures
(``figures``), the HTML page (``html``)."""

from __future__ import annotations

from tuner.report.data import (
    SweepSummary,
    best_trial,
    collective_table,
    failure_table,
    indistinguishable_from,
    pareto_front,
    reproduce_command,
    summarize,
)
from tuner.report.figures import throughput_by_trial, throughput_vs_memory
from tuner.report.frame import METRIC_COLUMNS, NOTE_COLUMNS, param_columns, trials_frame
from tuner.report.html import render_report, write_report

__all__ = [
    "METRIC_COLUMNS",
    "NOTE_COLUMNS",
    "SweepSummary",
    "best_trial",
    "collective_table",
    "failure_table",
    "indistinguishable_from",
    "param_columns",
    "pareto_front",
    "render_report",
    "reproduce_command",
    "summarize",
    "throughput_by_trial",
    "throughput_vs_memory",
    "trials_frame",
    "write_report",
]
