"""Sweep report: the table of trials (``frame``), data from it (``data``, ``leaderboard``,
``knobs``, ``measurements``), plotly figures (``figures``, ``figures_knobs``), the HTML page
(``html``, ``sections``) and the winner's export (``export_best``, ``frameworks``).

The data functions are the public API other pages (a comparison of sweeps) build on: they
return DataFrames and dataclasses and draw nothing. Layouts are named by
:func:`tuner.layout_name.layout_name`, re-exported here.
"""

from __future__ import annotations

from tuner.layout_name import layout_name, sweep_base, trial_config, trial_names, unique_labels
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
from tuner.report.export_best import best_config, write_best
from tuner.report.figures import throughput_by_trial, throughput_vs_memory
from tuner.report.frame import (
    METRIC_COLUMNS,
    NOTE_COLUMNS,
    PARTIAL_COLUMNS,
    param_columns,
    trials_frame,
)
from tuner.report.frameworks import deepspeed_config, torchtitan_config
from tuner.report.html import render_report, write_report
from tuner.report.knobs import convergence, importances, knob_effects
from tuner.report.leaderboard import exposed_share, interval_text, leaderboard

__all__ = [
    "METRIC_COLUMNS",
    "NOTE_COLUMNS",
    "PARTIAL_COLUMNS",
    "SweepSummary",
    "best_config",
    "best_trial",
    "collective_table",
    "convergence",
    "deepspeed_config",
    "exposed_share",
    "failure_table",
    "importances",
    "indistinguishable_from",
    "interval_text",
    "knob_effects",
    "layout_name",
    "leaderboard",
    "param_columns",
    "pareto_front",
    "render_report",
    "reproduce_command",
    "summarize",
    "sweep_base",
    "throughput_by_trial",
    "throughput_vs_memory",
    "torchtitan_config",
    "trial_config",
    "trial_names",
    "trials_frame",
    "unique_labels",
    "write_best",
    "write_report",
]
