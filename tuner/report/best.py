"""The report's best-configuration section: the best trial's figures in the units people read,
each figure it did not measure named with the reason, and the command that reproduces it."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engine.units import MIB
from tuner.report import data, measurements
from tuner.report.frame import METRIC_COLUMNS
from tuner.study import stored_result

if TYPE_CHECKING:
    from collections.abc import Callable

    import optuna


def _mib(v: float) -> str:
    return f"{v / MIB:,.1f} MiB"


#: The best trial's figures after throughput: (column, label, how to show its value).
SHOWN: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("step_time_s", "Step time", lambda v: f"{v:.4g} s"),
    ("peak_mem_bytes", "Peak memory (max over ranks)", _mib),
    ("comm_bytes", "Communication per step per rank", lambda v: f"{v / MIB:,.2f} MiB"),
    ("comm_time_s", "Communication time per step per rank", lambda v: f"{v * 1e3:,.2f} ms"),
    ("comm_count", "Collectives per step per rank", lambda v: f"{v:,.0f}"),
    ("comm_exposed_s", "Exposed communication per step per rank", lambda v: f"{v * 1e3:,.2f} ms"),
    ("tensor_peak_bytes", "Tensor peak (CPU, max over ranks)", _mib),
    ("mem_compared_bytes", "Measured peak the prediction is compared with", _mib),
    ("predicted_peak_mem_bytes", "Predicted peak memory", _mib),
    ("mem_prediction_error", "Memory prediction error", lambda v: f"{v * 100:+.1f} %"),
    ("mfu", "MFU", lambda v: f"{v * 100:.1f} %"),
    ("world_size", "World size", lambda v: f"{v:.0f}"),
    ("n_params", "Parameters", lambda v: f"{v:,.0f}"),
    ("final_loss", "Final loss", lambda v: f"{v:.4g}"),
)
assert {key for key, _, _ in SHOWN} <= set(METRIC_COLUMNS), "SHOWN names a figure no column has"


def _metric_rows(row: pd.Series, not_measured: dict[str, str]) -> list[tuple[str, str]]:
    """(label, value) pairs for the best trial, converted to the units people read; a figure
    the trial did not measure says so, with the reason."""

    def get(key: str) -> float | None:
        value = row.get(key)
        return None if value is None or pd.isna(value) else float(value)

    rows: list[tuple[str, str]] = []
    tps, lo, hi = get("tokens_per_s"), get("tokens_per_s_min"), get("tokens_per_s_max")
    if tps is not None:
        spread = f" (steps: {lo:,.0f} to {hi:,.0f})" if lo is not None and hi is not None else ""
        rows.append(("Throughput", f"{tps:,.0f} tokens/s{spread}"))
    ci_lo, ci_hi, cv = (
        get("tokens_per_s_ci_low"),
        get("tokens_per_s_ci_high"),
        get("tokens_per_s_cv"),
    )
    coverage = get("tokens_per_s_ci_coverage")
    if ci_lo is not None and ci_hi is not None and coverage is not None:
        rows.append(
            (
                f"Throughput interval ({coverage:.0%} coverage)",
                f"{ci_lo:,.0f} to {ci_hi:,.0f} tokens/s",
            )
        )
    profiled = row.get("timing_includes_profiler")
    if isinstance(profiled, (bool, np.bool_)) and profiled:
        rows.append(
            (
                "Timing",
                "the timed steps ran under the profiler (no unprofiled measured step): "
                "throughput includes its overhead",
            )
        )
    if cv is not None:
        rows.append(("Step-to-step variation (CV)", f"{cv * 100:.1f} %"))
    for key, label, convert in SHOWN:
        value = get(key)
        if key == "mem_compared_bytes":
            label += f" ({_compared_to(row)})"
        if value is not None:
            rows.append((label, convert(value)))
        elif key in not_measured:
            rows.append((label, f"not measured: {not_measured[key]}"))
    return rows


def _compared_to(row: pd.Series) -> str:
    key = row.get("mem_prediction_compared_to")
    return measurements.COMPARED_TO.get(str(key), str(key)) if isinstance(key, str) else "n/a"


def best_section(study: optuna.Study, df: pd.DataFrame, summary: data.SweepSummary) -> str:
    head = "<h2>Best configuration</h2>"
    if summary.best_number is None:
        return (
            head + "<p><strong>No trial completed</strong>, so there is no best configuration.</p>"
        )
    row = df.loc[df["number"] == summary.best_number].iloc[0]
    how = "highest" if summary.best_maximize else "lowest"
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == summary.best_number)
    rows = _metric_rows(row, stored_result(trial).get("not_measured") or {})
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    params = ", ".join(
        f"{k}={data.format_value(row[k])}" for k in summary.params if not pd.isna(row[k])
    )
    ties = data.indistinguishable_from(df, row) if summary.best_metric == "tokens_per_s" else []
    named = df.set_index("number")["layout"]
    tied = "; ".join(f"{html.escape(str(named[n]))} (trial {n})" for n in ties)
    tie_note = (
        f"<p><strong>Not distinguishable from the best</strong> (their throughput intervals "
        f"overlap its interval): {tied}. Repeat the measurement "
        f"(measure.repeats) before choosing between them.</p>"
        if ties
        else ""
    )
    return (
        f"{head}<p><strong>{html.escape(str(row['layout']))}</strong>: trial "
        f"{summary.best_number} ({how} {html.escape(summary.best_metric)})"
        f"{': ' + html.escape(params) if params else ''}</p>"
        f'<table class="metrics">{cells}</table>{tie_note}'
        f"<p>Reproduce:</p><pre>{html.escape(summary.best_command or '')}</pre>"
        "<p>The same run as a config file, and as DeepSpeed and torchtitan configs: "
        "<code>best/</code> next to this page (its NOTES.md says what does not carry over).</p>"
    )
