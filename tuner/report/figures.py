"""Drawing step of the sweep report: DataFrames from ``data.py`` in, plotly figures out.

No numbers are decided here (which trials are on the front, which is best): that is ``data.py``'s
job and is tested there. These functions only choose how to show them.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.units import MIB
from tuner.layout_name import unique_labels
from tuner.report.data import format_value
from tuner.report.frame import param_columns
from tuner.report.measurements import BREAKDOWN_PARTS, MEM_PARTS

logger = logging.getLogger(__name__)

FIG_HEIGHT = 460
MAX_POINT_LABELS = 15  # more names than this on one scatter overlap: only the front is named
_STATE_COLORS = {
    "COMPLETE": "#1f77b4",
    "FAIL": "#d62728",
    "PRUNED": "#ff7f0e",
    "RUNNING": "#7f7f7f",
    "WAITING": "#bcbd22",
}
_MEM_TITLE = "Peak memory, max over ranks (MiB)"
_TPS_TITLE = "Throughput (tokens/s)"


def _floats(series: pd.Series) -> np.ndarray:
    # Nullable Int64 columns hold pd.NA, which plotly cannot serialise; NaN it can.
    return series.to_numpy(dtype="float64", na_value=np.nan)


def _hover_labels(df: pd.DataFrame) -> list[str]:
    """The layout's name and trial number, then one ``key=value`` line per searched
    parameter the trial sampled."""
    params = param_columns(df)
    labels = []
    for _, row in df.iterrows():
        head = f"<b>{row['layout']}</b><br>trial {int(row['number'])}"
        if not pd.isna(row["duplicate_of"]):
            head += f" (repeat of trial {int(row['duplicate_of'])})"
        lines = [f"{k}={format_value(row[k])}" for k in params if not pd.isna(row[k])]
        labels.append("<br>".join([head, *lines]))
    return labels


def empty_figure(fig: go.Figure, message: str) -> go.Figure:
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def _spread(df: pd.DataFrame) -> dict | None:
    """Asymmetric error bars from the per-step min/max, or None when no trial recorded them."""
    y = _floats(df["tokens_per_s"])
    lo = _floats(df["tokens_per_s_min"])
    hi = _floats(df["tokens_per_s_max"])
    if np.isnan(lo).all() and np.isnan(hi).all():
        return None
    # A missing bound draws no bar on that side rather than inventing a spread.
    return {
        "type": "data",
        "symmetric": False,
        "array": np.nan_to_num(hi - y, nan=0.0),
        "arrayminus": np.nan_to_num(y - lo, nan=0.0),
        "thickness": 1,
    }


def throughput_vs_memory(df: pd.DataFrame, front: pd.DataFrame) -> go.Figure:
    """Every COMPLETE trial as a point (memory vs throughput) with the Pareto front on top."""
    fig = go.Figure()
    fig.update_layout(
        title="Throughput vs peak memory",
        xaxis_title=_MEM_TITLE,
        yaxis_title=_TPS_TITLE,
        height=FIG_HEIGHT,
        hovermode="closest",
    )
    done = df[
        (df["state"] == "COMPLETE") & df["tokens_per_s"].notna() & df["peak_mem_bytes"].notna()
    ]
    if done.empty:
        return empty_figure(fig, "No completed trial reported throughput and memory.")
    fig.add_trace(
        go.Scatter(
            x=_floats(done["peak_mem_bytes"]) / MIB,
            y=_floats(done["tokens_per_s"]),
            # every point named when the names fit; past that the front's points are
            mode="markers+text" if len(done) <= MAX_POINT_LABELS else "markers",
            name="completed trials",
            marker={"size": 9, "color": _STATE_COLORS["COMPLETE"], "opacity": 0.75},
            error_y=_spread(done),
            text=list(done["layout"]),
            textposition="top center",
            textfont={"size": 9},
            hovertext=_hover_labels(done),
            hovertemplate="%{hovertext}<br>%{x:.1f} MiB<br>%{y:,.0f} tokens/s<extra></extra>",
        )
    )
    if not front.empty:
        fig.add_trace(
            go.Scatter(
                x=_floats(front["peak_mem_bytes"]) / MIB,
                y=_floats(front["tokens_per_s"]),
                mode="lines+markers" if len(done) <= MAX_POINT_LABELS else "lines+markers+text",
                name="Pareto front",
                # Horizontal-then-vertical steps: with memory m to spare, the best attainable
                # throughput is that of the last front point left of m, not an interpolation.
                line={"shape": "hv", "color": "#2ca02c", "width": 2},
                marker={"size": 12, "symbol": "diamond-open", "color": "#2ca02c"},
                text=list(front["layout"]),
                textposition="bottom right",
                textfont={"size": 9},
                hovertext=_hover_labels(front),
                hovertemplate="Pareto: %{hovertext}<extra></extra>",
            )
        )
    return fig


def throughput_by_trial(df: pd.DataFrame) -> go.Figure:
    """A horizontal bar of tokens/s per trial, named by its layout, in trial order from the
    top; trials without throughput get a zero bar labelled with why."""
    labels = unique_labels(df["layout"], df["number"])
    fig = go.Figure()
    fig.update_layout(
        title="Throughput by trial",
        xaxis_title=_TPS_TITLE,
        height=bar_height(len(df)),
        barmode="overlay",
        # Category axis so that every trial, even a failed one, has its own labelled slot.
        yaxis={
            "type": "category",
            "categoryorder": "array",
            "categoryarray": labels[::-1],
            "automargin": True,
        },
    )
    if df.empty:
        return empty_figure(fig, "The sweep has no trials.")
    shown = df.assign(label=labels)
    for state, group in shown.groupby("state", sort=False):
        x = np.nan_to_num(_floats(group["tokens_per_s"]), nan=0.0)
        notes = []
        for _, row in group.iterrows():
            if not pd.isna(row["tokens_per_s"]):
                dup = row["duplicate_of"]
                notes.append("" if pd.isna(dup) else f"= #{int(dup)}")
            else:
                notes.append(str(row["fail_reason"]) if not pd.isna(row["fail_reason"]) else state)
        fig.add_trace(
            go.Bar(
                y=list(group["label"]),
                x=x,
                orientation="h",
                name=str(state),
                marker_color=_STATE_COLORS.get(str(state), "#9467bd"),
                text=notes,
                textposition="outside",
                hovertext=_hover_labels(group),
                hovertemplate="%{hovertext}<br>%{x:,.0f} tokens/s<extra>" + str(state) + "</extra>",
            )
        )
    return fig


def bar_height(n_bars: int) -> int:
    """Height of a horizontal bar chart: room for each name, never below the usual height."""
    return max(FIG_HEIGHT, 120 + 26 * n_bars)


_PART_COLORS = {
    "forward": "#1f77b4",
    "backward": "#aec7e8",
    "optimizer": "#9467bd",
    "comm_exposed": "#d62728",
    "bubble": "#ff7f0e",
    "data": "#7f7f7f",
    "params": "#1f77b4",
    "grads": "#2ca02c",
    "activations": "#ff7f0e",
}


def _stacked(
    frame: pd.DataFrame, *, title: str, unit: str, parts: tuple[str, ...], label, empty: str
) -> go.Figure:
    """A stacked bar per trial of ``parts`` (columns of ``frame``, in ``unit``); ``label``
    names a part's trace. The caller adds what the bars are compared with."""
    fig = go.Figure()
    fig.update_layout(
        title=title,
        xaxis_title="Trial",
        yaxis_title=unit,
        barmode="stack",
        height=FIG_HEIGHT,
        xaxis={"tickangle": -25, "automargin": True},  # layout names are long
    )
    if frame.empty:
        return empty_figure(fig, empty)
    for part in parts:
        fig.add_trace(
            go.Bar(
                x=frame["trial"],
                y=frame[part],
                name=label(part),
                marker_color=_PART_COLORS.get(part, "#9467bd"),
                hovertemplate="%{x}: %{y:.2f} " + unit + "<extra>" + part + "</extra>",
            )
        )
    return fig


def time_breakdown(frame: pd.DataFrame) -> go.Figure:
    """One stacked bar per trial: where a profiled step's time went (ms), with the stopwatch's
    step time as a marker (the parts must add up to it)."""
    fig = _stacked(
        frame,
        title="Step-time breakdown (profiled steps, mean over ranks)",
        unit="ms",
        parts=BREAKDOWN_PARTS,
        label=lambda part: part.replace("_", " "),
        empty="No completed trial reported a breakdown.",
    )
    if frame.empty:
        return fig
    fig.add_trace(
        go.Scatter(
            x=frame["trial"],
            y=frame["step_ms"],
            mode="markers",
            name="step time (stopwatch)",
            marker={"symbol": "line-ew-open", "size": 28, "color": "black"},
            hovertemplate="%{x}: step %{y:.2f} ms<extra></extra>",
        )
    )
    return fig


def memory_vs_prediction(frame: pd.DataFrame) -> go.Figure:
    """Predicted peak per trial, stacked by part, next to the measured peak it is compared
    with; the hover shows the prediction error."""
    fig = _stacked(
        frame,
        title="Predicted vs measured peak memory (max over ranks)",
        unit="MiB",
        parts=MEM_PARTS,
        label=lambda part: f"predicted {part}",
        empty="No completed trial has both a memory prediction and the peak it is compared with.",
    )
    if frame.empty:
        return fig
    for compared_to, rows in frame.groupby("compared_to", sort=False):
        errors = [f"{100 * e:+.1f}%" if not pd.isna(e) else "n/a" for e in rows["error"]]
        fig.add_trace(
            go.Scatter(
                x=rows["trial"],
                y=rows["measured"],
                mode="markers",
                name=f"measured: {compared_to}",
                marker={"symbol": "diamond", "size": 12, "color": "black"},
                text=errors,
                hovertemplate="%{x}: measured %{y:.2f} MiB, prediction error %{text}"
                "<extra></extra>",
            )
        )
    return fig


def figure_html(fig: go.Figure) -> str:
    """A figure's div and newPlot call; plotly.js is inlined once in the page's head."""
    return fig.to_html(
        full_html=False, include_plotlyjs=False, default_height=f"{fig.layout.height}px"
    )
