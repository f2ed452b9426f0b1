"""plan.html: the plan as a page, in the sweep report's style — data first (a DataFrame of
every layout), then figures drawn from it."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from tuner.config import Loaded
from tuner.perf.cluster import Cluster
from tuner.perf.errors import ErrorBands, layout_kind
from tuner.perf.model import Coefficients
from tuner.planner.rank import FIELDS, PlanRow
from tuner.planner.show import describe, infeasible_summary
from tuner.report.html import figure_html, page

GIB = 2**30


def plan_frame(rows: list[PlanRow]) -> pd.DataFrame:
    """One row per layout, best first: its knobs, verdict and predictions."""
    if not rows:
        return pd.DataFrame()
    # built column by column: far faster than from one dict per row, with the same dtypes
    df = pd.DataFrame({name: [getattr(r, name) for r in rows] for name in FIELDS})
    df.insert(0, "layout", [describe(r) for r in rows])
    df.insert(1, "kind", [layout_kind(r.dp, r.tp, r.pp) for r in rows])
    df["predicted_mem_gib_per_gpu"] = df["predicted_mem_bytes_per_gpu"] / GIB
    return df


def throughput_vs_memory(df: pd.DataFrame, mem_gib: float) -> go.Figure:
    fig = go.Figure()
    ok = df[df["feasible"]] if not df.empty else df
    for kind, part in ok.groupby("kind") if not ok.empty else []:
        fig.add_trace(
            go.Scatter(
                x=part["predicted_mem_gib_per_gpu"],
                y=part["predicted_tokens_per_s"],
                mode="markers",
                name=kind,
                text=part["layout"],
                hovertemplate="%{text}<br>%{y:,.0f} tokens/s<br>%{x:.1f} GiB<extra></extra>",
            )
        )
    fig.add_vline(x=mem_gib, line_dash="dot", annotation_text="usable memory per device")
    fig.update_layout(
        height=480,
        xaxis_title="predicted peak memory per device (GiB)",
        yaxis_title="predicted tokens/s",
    )
    return fig


def step_parts(rows: list[PlanRow]) -> go.Figure:
    """Where the predicted step time goes, for the best layouts."""
    names = sorted({k for r in rows for k in r.step_parts_s})
    labels = [f"{i}. {describe(r)}" for i, r in enumerate(rows, 1)]
    fig = go.Figure(
        [
            go.Bar(name=k, y=labels, x=[r.step_parts_s.get(k, 0.0) for r in rows], orientation="h")
            for k in names
        ]
    )
    fig.update_layout(
        barmode="stack",
        height=120 + 28 * len(rows),
        xaxis_title="predicted seconds per step",
        yaxis={"autorange": "reversed"},
    )
    return fig


def render(
    rows: list[PlanRow],
    *,
    cfg: Loaded,
    cluster: Cluster,
    world: int,
    bands: ErrorBands,
    coeffs: Coefficients,
    top_k: int,
) -> str:

    df = plan_frame(rows)
    best = [r for r in rows if r.feasible][:top_k]
    m = cfg.run.model
    title = f"{m.name} on {cluster.name} × {world}"
    shown = df.drop(columns=["step_parts_s"]) if not df.empty else df
    body = [
        f"<h1>Plan: {html.escape(title)}</h1>",
        f'<p class="muted">global batch {cfg.run.train.global_batch} × {m.seq_len} tokens; '
        f"coefficients: {html.escape(coeffs.source)}; error: {html.escape(bands.describe())}. "
        "Predictions, not measurements: verify the best with the commands the plan prints.</p>",
        "<h2>Best layouts: where the step time goes</h2>",
        figure_html(step_parts(best)),
        "<h2>Throughput against memory</h2>",
        figure_html(throughput_vs_memory(df, cluster.mem_bytes / GIB)),
        "<h2>Layouts that cannot run</h2>",
        f"<pre>{html.escape(infeasible_summary([r for r in rows if not r.feasible]))}</pre>",
        "<h2>Every layout</h2>",
        '<div class="scroll">'
        + shown.head(500).to_html(index=False, escape=True, na_rep="", border=0)
        + "</div>",
    ]
    return page(f"paratune plan: {title}", body)


def write_page(path: Path, *, rows: list[PlanRow], top_k: int = 10, **context) -> Path:
    from tuner.outputs import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render(rows, top_k=top_k, **context))
    return path
