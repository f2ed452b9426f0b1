"""Drawing step for the leaderboard and "what each knob does": data from ``leaderboard.py``
and ``knobs.py`` in, plotly figures out (nothing is decided here)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tuner.report.data import format_value
from tuner.report.figures import FIG_HEIGHT, bar_height, empty_figure

_BEST, _TIED, _OTHER, _SPREAD = "#2ca02c", "#98df8a", "#1f77b4", "#c7c7c7"
_TPS = "tokens/s"


def leaderboard_bars(board: pd.DataFrame) -> go.Figure:
    """The ranked layouts as horizontal bars, best on top, with their intervals; the best
    and the layouts not distinguishable from it coloured apart."""
    ranked = board[board["rank"].notna()]
    fig = go.Figure()
    fig.update_layout(
        title="Layouts by throughput (bars: median; whiskers: its interval)",
        xaxis_title=_TPS,
        height=bar_height(len(ranked)),
        yaxis={"autorange": "reversed", "automargin": True, "type": "category"},
        showlegend=False,
    )
    if ranked.empty:
        return empty_figure(fig, "No layout completed.")
    y = ranked["tokens_per_s"].to_numpy(dtype="float64")
    low = ranked["tokens_per_s_ci_low"].to_numpy(dtype="float64")
    high = ranked["tokens_per_s_ci_high"].to_numpy(dtype="float64")
    colors = [
        _BEST if r == 1 else _TIED if tied else _OTHER
        for r, tied in zip(ranked["rank"], ranked["tied_with_best"], strict=True)
    ]
    fig.add_trace(
        go.Bar(
            y=[f"{int(r)}. {name}" for r, name in zip(ranked["rank"], ranked["layout"])],
            x=y,
            orientation="h",
            marker_color=colors,
            error_x={
                "type": "data",
                "symmetric": False,
                "array": np.nan_to_num(high - y, nan=0.0),
                "arrayminus": np.nan_to_num(y - low, nan=0.0),
            },
            text=[f"{p:.0f}%" for p in ranked["pct_of_best"]],
            textposition="inside",
            hovertemplate="%{y}<br>%{x:,.0f} tokens/s<extra></extra>",
        )
    )
    return fig


def knob_effects_figure(effects: pd.DataFrame) -> go.Figure:
    """One panel per searched knob: tokens/s by value, the spread over every measured layout
    with that value (grey bar, median tick) and the layout equal to the best but for this
    knob (green diamond)."""
    knobs = list(dict.fromkeys(effects["knob"]))
    cols = min(3, max(len(knobs), 1))
    rows = max(math.ceil(len(knobs) / cols), 1)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=knobs or None)
    fig.update_layout(
        title="Throughput by knob value", height=max(FIG_HEIGHT, 300 * rows), barmode="overlay"
    )
    if effects.empty:
        return empty_figure(fig, "No completed trial to read the knobs from.")
    for i, knob in enumerate(knobs):
        part = effects[effects["knob"] == knob]
        x = [format_value(v) for v in part["value"]]
        at = {"row": i // cols + 1, "col": i % cols + 1}
        first = i == 0
        fig.add_trace(
            go.Bar(
                x=x,
                y=part["max"] - part["min"],
                base=part["min"],
                marker_color=_SPREAD,
                name="all layouts with this value (min to max)",
                legendgroup="spread",
                showlegend=first,
                customdata=np.stack([part["n"], part["median"], part["min"], part["max"]], axis=-1),
                hovertemplate="%{x}: %{customdata[2]:,.0f} to %{customdata[3]:,.0f}, median "
                "%{customdata[1]:,.0f} over %{customdata[0]} layout(s)<extra></extra>",
            ),
            **at,
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=part["median"],
                mode="markers",
                marker={"symbol": "line-ew-open", "size": 22, "color": "#555"},
                name="median",
                legendgroup="median",
                showlegend=first,
                hoverinfo="skip",
            ),
            **at,
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=part["at_best"],
                mode="markers",
                marker={"symbol": "diamond", "size": 12, "color": _BEST},
                name="the best layout, this knob changed",
                legendgroup="best",
                showlegend=first,
                text=list(part["at_best_layout"]),
                hovertemplate="%{text}<br>%{y:,.0f} tokens/s<extra></extra>",
            ),
            **at,
        )
        fig.update_xaxes(type="category", **at)
        fig.update_yaxes(title_text=_TPS if at["col"] == 1 else None, **at)
    return fig


def importances_figure(table: pd.DataFrame) -> go.Figure:
    """Parameter importances as horizontal bars, the most important on top."""
    fig = go.Figure()
    fig.update_layout(
        title="Parameter importance (Optuna, PED-ANOVA)",
        xaxis_title="importance (share)",
        height=max(260, 120 + 32 * len(table)),
        yaxis={"autorange": "reversed", "automargin": True},
    )
    if table.empty:
        return empty_figure(fig, "Not computed.")
    fig.add_trace(
        go.Bar(
            y=list(table["param"]),
            x=table["importance"],
            orientation="h",
            marker_color=_OTHER,
            text=[f"{v:.2f}" for v in table["importance"]],
            textposition="outside",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    return fig


def convergence_figure(conv: pd.DataFrame, *, metric: str = "tokens_per_s") -> go.Figure:
    """Each completed trial's value against the trial time spent so far, and the best so far
    as a step line; points that set a new best are named by their layout."""
    fig = go.Figure()
    fig.update_layout(
        title="Convergence: best so far against trial time",
        xaxis_title="trial time so far (s, summed over trials)",
        yaxis_title=metric,
        height=FIG_HEIGHT,
    )
    if conv.empty:
        return empty_figure(fig, "No completed trial.")
    fig.add_trace(
        go.Scatter(
            x=conv["elapsed_s"],
            y=conv["value"],
            mode="markers",
            name="trial",
            marker={"color": _OTHER, "size": 8, "opacity": 0.7},
            text=list(conv["layout"]),
            hovertemplate="%{text}<br>%{y:,.4g} after %{x:,.0f} s<extra></extra>",
        )
    )
    news = conv[conv["new_best"]]
    fig.add_trace(
        go.Scatter(
            x=conv["elapsed_s"],
            y=conv["best_so_far"],
            mode="lines",
            line={"shape": "hv", "color": _BEST},
            name="best so far",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=news["elapsed_s"],
            y=news["value"],
            mode="markers+text",
            marker={"color": _BEST, "size": 11, "symbol": "star"},
            name="new best",
            text=list(news["layout"]),
            textposition="bottom right",
            textfont={"size": 9},
            hovertemplate="%{text}<br>%{y:,.4g} after %{x:,.0f} s<extra></extra>",
        )
    )
    return fig
