"""Assemble the sweep report into one self-contained HTML page and write it with the CSV.

The page must open offline (on a cluster login node, from a copied folder), so plotly.js is inlined
once in the head and every figure is rendered without its own copy.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.offline

from tuner.outputs import OutputError, atomic_write_text, describe
from tuner.report import data, figures, measurements, sections
from tuner.report.best import best_section
from tuner.report.confirmation import confirmation_section
from tuner.report.export_best import write_best
from tuner.report.figures import figure_html
from tuner.report.frame import busy_trials
from tuner.report.leaderboard import leaderboard

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.muted { color: #666; }
pre { background: #f5f5f5; padding: 0.8em; overflow-x: auto; white-space: pre-wrap; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
td { font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
.scroll { overflow-x: auto; max-width: 100%; }
td { overflow-wrap: anywhere; max-width: 40em; }
th { overflow-wrap: anywhere; }  /* long column names wrap rather than widen the page */
.all table td:nth-child(2) { min-width: 14em; overflow-wrap: normal; }  /* the layout */
.board td:nth-child(2) { overflow-wrap: normal; min-width: 16em; }
.tie { color: #2ca02c; font-weight: 600; white-space: nowrap; }
details { margin: 0.4em 0; } summary { cursor: pointer; font-weight: 600; }
details details { margin-left: 1em; }
.plotly-graph-div { max-width: 100%; }
"""


def _fmt(value: Any) -> str:
    """Readable number: thousands separators, few decimals; empty for missing."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, (bool, np.bool_, str)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) < 1e15:
            return f"{value:,.0f}"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def _cell_text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return data.format_value(value) if isinstance(value, (int, float, np.number)) else str(value)


def _table(df: pd.DataFrame) -> str:
    """``DataFrame.to_html`` of formatted strings, HTML-escaped by pandas."""
    # Only measurements get thousands separators; trial ids and parameter values are shown as
    # they are typed (a "parallel.dp" of 1,024 would not paste back as an override).
    measured = {*data.METRIC_COLUMNS, "duration_s", "overhead_s"}
    shown = pd.DataFrame(
        {c: df[c].map(_fmt if c in measured else _cell_text) for c in df.columns},
        columns=df.columns,
    )
    table = shown.to_html(index=False, escape=True, na_rep="", border=0)
    return f'<div class="scroll">{table}</div>'


def page(title: str, body: list[str]) -> str:
    """A self-contained HTML page (works offline): the report's style and plotly.js inline."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>\n'
        "</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _machines(study: optuna.Study, df: pd.DataFrame) -> str:
    used = data.machines_used(study, df)
    if not used:
        return '<p class="muted">The machine these trials ran on was not recorded.</p>'
    if len(used) == 1:
        m = used[0]
        return (
            f'<p class="muted">Measured on {html.escape(m.description)}, from {m.first_seen}.</p>'
        )
    items = "".join(
        f"<li>[{m.id}] {html.escape(m.description)}, from {m.first_seen}: "
        f"{len(m.trials)} trial(s) {', '.join(map(str, m.trials))}</li>"
        for m in used
    )
    return (
        f"<p><strong>Measured on {len(used)} machines</strong> (sweep.allow_other_machine=true): "
        "figures from different machines are not directly comparable; the trials table names "
        f"each trial's machine.</p><ul>{items}</ul>"
    )


def _busy(df: pd.DataFrame) -> str:
    flagged = busy_trials(df)
    if not flagged:
        return ""
    return (
        f"<p><strong>{len(flagged)} trial(s) started on a busy machine</strong> (1-minute load "
        "above its cores; columns load_1min and busy): "
        + ", ".join(f"#{n}" for n in flagged)
        + ". Other work shared the cores, so their figures may read low; measure them again "
        "on a quiet machine, or give each worker its own cores (launcher.cpus).</p>"
    )


def _title(summary: data.SweepSummary) -> str:
    counts = ", ".join(f"{n} {html.escape(s)}" for s, n in summary.state_counts.items()) or "none"
    objectives = ", ".join(
        f"{html.escape(o)} ({html.escape(d)})"
        for o, d in zip(summary.objectives, summary.directions, strict=False)
    )
    parts = [
        f"<h1>Sweep report: {html.escape(summary.sweep_name)}</h1>",
        f'<p class="muted">{summary.n_trials} trials ({counts}); '
        f"{summary.n_distinct_configs} distinct configurations"
        + (f"; objectives: {objectives}" if objectives else "")
        + "</p>",
    ]
    if summary.base_overrides:
        fixed = " ".join(html.escape(o) for o in summary.base_overrides)
        parts.append(f'<p class="muted">Fixed for the whole sweep: <code>{fixed}</code></p>')
    return "\n".join(parts)


def _failure_section(df: pd.DataFrame) -> str:
    head = "<h2>Failed and pruned trials</h2>"
    failed = data.failure_table(df)
    if failed.empty:
        return head + "<p>None: every trial completed or is still running.</p>"
    reasons = failed["fail_reason"].fillna("unknown").value_counts().to_dict()
    counts = ", ".join(f"{n} {html.escape(str(r))}" for r, n in reasons.items())
    return f"{head}<p>{len(failed)} trials ({counts}).</p>" + _table(failed)


def _comm_section(study: optuna.Study, df: pd.DataFrame, summary: data.SweepSummary) -> str:
    if summary.best_number is None:
        return ""
    table, notes = data.collective_table(study, summary.best_number)
    if table.empty:
        return ""
    layout = str(df.loc[df["number"] == summary.best_number, "layout"].iloc[0])
    caveats = "".join(f'<p class="muted">{html.escape(n)}</p>' for n in notes)
    return (
        f"<h2>Communication of trial {summary.best_number}: {html.escape(layout)}</h2>"
        "<p>Per step and rank, by collective: count, size, time in flight, the part of it during "
        "which the rank computed nothing (exposed), and bandwidths in nccl-tests' conventions "
        "(empty where several mesh dimensions communicate and the group size is ambiguous).</p>"
        + _table(table)
        + caveats
    )


def render_report(study: optuna.Study, df: pd.DataFrame | None = None) -> str:
    """The report page as a string (``write_report`` writes it)."""
    if df is None:
        df = data.trials_frame(study)
    summary = data.summarize(study, df)
    front = data.pareto_front(df)
    board = leaderboard(df, metric=summary.best_metric, maximize=summary.best_maximize)
    body = [
        _title(summary),
        _machines(study, df),
        sections.leaderboard_section(board),
        confirmation_section(study, df),
        _busy(df),
        best_section(study, df, summary),
        sections.knobs_section(study, df, summary),
        _comm_section(study, df, summary),
        "<h2>Throughput vs memory</h2>",
        f'<p class="muted">{len(front)} trials on the Pareto front: no other completed trial '
        + "has both less memory and more throughput.</p>",
        figure_html(figures.throughput_vs_memory(df, front)),
        "<h2>Throughput by trial</h2>",
        figure_html(figures.throughput_by_trial(df)),
        "<h2>Where the step time goes</h2>",
        '<p class="muted">Per profiled step, mean over ranks. Exposed communication: a '
        "collective is in flight and the rank computes nothing. Bubble: waiting for a pipeline "
        "neighbour, or idle. The black mark is the stopwatch's step time of the same steps; "
        "the parts add up to it.</p>",
        figure_html(figures.time_breakdown(measurements.step_breakdown(df))),
        "<h2>Memory: predicted vs measured</h2>",
        '<p class="muted">Bars: the analytic peak (ZeRO-paper model states, activations per '
        "Korthikanti et al.) of the rank predicted highest. Diamond: the measured peak it is "
        "compared with, like with like, named in the legend (CPU: tensors only, from the "
        "profiler's memory events; CUDA: the allocator's peak). Trials without that "
        "measurement (no profiled step on CPU) are left out.</p>",
        figure_html(figures.memory_vs_prediction(measurements.memory_prediction(df))),
        _failure_section(df),
        sections.all_trials_section(df, _table),
    ]
    return page(f"paratune: {summary.sweep_name}", body)


def write_report(study: optuna.Study, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``trials.csv`` and ``report.html`` into ``out_dir``; return the HTML path."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write the report: {describe(err)}") from None
    df = data.trials_frame(study)
    atomic_write_text(out / "trials.csv", df.to_csv(index=False))
    path = out / "report.html"
    atomic_write_text(path, render_report(study, df))
    write_best(study, data.summarize(study, df), out)
    logger.info("wrote sweep report %s (%d trials)", path, len(df))
    return path
