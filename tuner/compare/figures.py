"""Drawing step of the comparison page: the DataFrames of ``compare.data`` in, plotly figures
out. Nothing is decided here; every trace is labelled with the layout's short name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

if TYPE_CHECKING:
    from collections.abc import Sequence

# one colour per sweep, the same in every figure of the page (plotly's default cycle)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
ROW_PX = 22


def color(names: Sequence[str], name: str) -> str:
    return COLORS[list(names).index(name) % len(COLORS)]


def _floats(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _interval(part: pd.DataFrame) -> dict | None:
    """Error bars spanning each throughput's interval, or None when no row has one."""
    if part["ci_low"].isna().all():
        return None
    x = _floats(part["tokens_per_s"])
    above, below = _floats(part["ci_high"]) - x, x - _floats(part["ci_low"])
    # a missing bound draws no bar on that side rather than inventing a spread
    bars = {"array": np.nan_to_num(above), "arrayminus": np.nan_to_num(below)}
    return {"type": "data", "symmetric": False, "thickness": 1, **bars}


def throughput(side: pd.DataFrame, names: Sequence[str]) -> go.Figure:
    """The shared layouts, one bar per sweep, fastest in the reference on top."""
    layouts = list(dict.fromkeys(side["layout"]))
    fig = go.Figure()
    # plotly stacks a group's bars upwards: added last to first, the reference is on top
    for name in reversed(names):
        part = side[side["sweep"] == name]
        fig.add_trace(
            go.Bar(
                name=name,
                y=part["layout"],
                x=part["tokens_per_s"],
                orientation="h",
                marker_color=color(names, name),
                error_x=_interval(part),
                customdata=np.stack([part["trial"], _floats(part["pct_of_best"])], axis=-1),
                hovertemplate=f"{name} trial %{{customdata[0]}}<br>%{{y}}<br>%{{x:,.0f}} "
                "tokens/s (%{customdata[1]:.0f}% of its best)<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        height=180 + ROW_PX * len(layouts) * len(names),
        xaxis_title="tokens/s (bars: the 95% interval of the median where measured)",
        yaxis={"categoryorder": "array", "categoryarray": layouts[::-1]},
        legend={"title_text": "sweep", "traceorder": "reversed"},
        margin={"l": 10},
    )
    return fig


def ratios(side: pd.DataFrame, names: Sequence[str]) -> go.Figure:
    """Each sweep over the reference for the same layout; hollow where the two intervals
    overlap (the measurements cannot tell the two apart)."""
    layouts = list(dict.fromkeys(side["layout"]))
    fig = go.Figure()
    for name in names[1:]:
        part = side[(side["sweep"] == name) & side["ratio"].notna()]
        apart = part["distinguishable"].fillna(True).astype(bool)
        fig.add_trace(
            go.Scatter(
                name=f"{name} / {names[0]}",
                y=part["layout"],
                x=part["ratio"],
                mode="markers",
                marker={
                    "color": color(names, name),
                    "size": 11,
                    "symbol": ["circle" if a else "circle-open" for a in apart],
                },
                hovertemplate="%{y}<br>×%{x:.2f}<extra>" + f"{name} / {names[0]}</extra>",
            )
        )
    fig.add_vline(x=1, line_dash="dot", line_color="#666")
    fig.update_layout(
        height=180 + 2 * ROW_PX * len(layouts),
        xaxis_title=f"tokens/s relative to {names[0]} (1 = as fast)",
        yaxis={"categoryorder": "array", "categoryarray": layouts[::-1]},
        margin={"l": 10},
    )
    return fig


def knob_effects(effects: pd.DataFrame, names: Sequence[str]) -> go.Figure:
    """One panel per knob: per value, the fastest trial with it as % of its sweep's best."""
    knobs = list(dict.fromkeys(effects["knob"]))
    fig = make_subplots(rows=1, cols=len(knobs), subplot_titles=knobs, shared_yaxes=True)
    for col, knob in enumerate(knobs, 1):
        for name in names:
            part = effects[(effects["knob"] == knob) & (effects["sweep"] == name)]
            fig.add_trace(
                go.Bar(
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    x=part["value"],
                    y=part["best_pct"],
                    marker_color=color(names, name),
                    customdata=np.stack([part["best_layout"], part["trials"]], axis=-1),
                    hovertemplate=f"{name}: {knob}=%{{x}}<br>best %{{y:.0f}}% "
                    "(%{customdata[0]}; %{customdata[1]} trials)<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(type="category", row=1, col=col)
    fig.update_yaxes(title_text="fastest with this value, % of the sweep's best", row=1, col=1)
    fig.update_layout(barmode="group", height=420, legend_title_text="sweep")
    return fig
