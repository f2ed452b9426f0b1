"""HTML sections of the sweep report that read the leaderboard, the knobs and the table of
trials (the page around them: ``html.py``)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import pandas as pd

from engine.units import MIB
from tuner.report import figures_knobs, knobs
from tuner.report.figures import figure_html
from tuner.report.frame import LEAD_COLUMNS, METRIC_COLUMNS, PARTIAL_COLUMNS, param_columns
from tuner.report.leaderboard import interval_text

if TYPE_CHECKING:
    from collections.abc import Callable

    import optuna

    from tuner.report.data import SweepSummary


def _pct(v: float) -> str:
    return "" if pd.isna(v) else f"{100 * v:.1f}%"


def _num(v: float, unit: str = "") -> str:
    return "" if pd.isna(v) else f"{v:,.0f}{unit}"


def leaderboard_section(board: pd.DataFrame) -> str:
    """The first table a reader sees: ranked layouts in words with their figures."""
    head = "<h2>Leaderboard</h2>"
    if board.empty:
        return head + "<p>No trial was launched.</p>"
    rows = []
    for _, r in board.iterrows():
        interval = interval_text(r).partition(" tokens/s")[2].strip()
        mark = " <span class='tie'>≈ best</span>" if r["tied_with_best"] else ""
        cells = [
            "" if pd.isna(r["rank"]) else str(int(r["rank"])),
            f"<strong>{html.escape(str(r['layout']))}</strong>{mark}",
            _num(r["tokens_per_s"]),
            interval,
            "" if pd.isna(r["pct_of_best"]) else f"{r['pct_of_best']:.0f}%",
            _num(r["peak_mem_bytes"] / MIB),
            _pct(r["mfu"]),
            _pct(r["comm_exposed_share"]),
            html.escape(str(r["state"])),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    names = (
        "#",
        "Layout",
        "Tokens/s",
        "Interval (coverage)",
        "% of best",
        "Memory per rank (MiB)",
        "MFU",
        "Exposed comm.",
        "State",
    )
    header = "".join(f"<th>{n}</th>" for n in names)
    ties = int(board["tied_with_best"].sum())
    note = (
        f"<p><strong>≈ best</strong>: {ties} layout(s) whose throughput interval overlaps "
        "the best one's; the measurements cannot tell them apart (repeat them with "
        "measure.repeats before choosing).</p>"
        if ties
        else ""
    )
    return (
        f"{head}<p class='muted'>Every launched layout, best first (repeats and pruned layouts "
        "left out). Memory: peak, max over ranks. Exposed comm.: share of the step time a "
        "collective is in flight while the rank computes nothing.</p>"
        f'<div class="scroll"><table class="board"><tr>{header}</tr>{"".join(rows)}</table></div>'
        + note
        + figure_html(figures_knobs.leaderboard_bars(board))
    )


def knobs_section(study: optuna.Study, df: pd.DataFrame, summary: SweepSummary) -> str:
    """What each searched knob does, the importances, and how fast the search converged."""
    best = None
    if summary.best_number is not None:
        best = df.loc[df["number"] == summary.best_number].iloc[0]
    effects = knobs.knob_effects(df, best, metric="tokens_per_s")
    table, note = knobs.importances(study, df)
    conv = knobs.convergence(df, metric=summary.best_metric, maximize=summary.best_maximize)
    return "\n".join(
        [
            "<h2>What each knob does</h2>",
            '<p class="muted">Per searched knob, tokens/s by value. Diamond: the best layout '
            "with only this knob changed (missing where that layout was not measured). Grey "
            "bar: every measured layout with this value, min to max, and its median: how much "
            "the other knobs matter at that value.</p>",
            figure_html(figures_knobs.knob_effects_figure(effects)),
            f'<p class="muted">{html.escape(note)}</p>',
            figure_html(figures_knobs.importances_figure(table)) if not table.empty else "",
            "<h2>Convergence</h2>",
            '<p class="muted">Each completed trial against the trial time spent until it '
            "ended; the line is the best so far. A line that went flat early says more "
            "trials would likely not find better.</p>",
            figure_html(figures_knobs.convergence_figure(conv, metric=summary.best_metric)),
        ]
    )


def topic_groups(df: pd.DataFrame) -> dict[str, list[str]]:
    """The table of trials' columns by topic, each group led by the trial and its layout."""

    def starts(*prefixes: str) -> Callable[[str], bool]:
        return lambda c: c.startswith(prefixes)

    rules: list[tuple[str, Callable[[str], bool]]] = [
        (
            "Throughput and time",
            starts("tokens_per_s", "step_time", "mfu", "hfu", "flops", "partial_"),
        ),
        ("Memory", starts("peak_mem", "tensor_peak", "predicted_peak", "mem_")),
        ("Communication", starts("comm_")),
        ("Step-time breakdown", starts("breakdown_")),
    ]
    groups: dict[str, list[str]] = {"Trial": list(LEAD_COLUMNS)}
    groups["Searched parameters"] = param_columns(df)
    taken = set(groups["Trial"]) | set(groups["Searched parameters"])
    for name, rule in rules:
        groups[name] = [c for c in (*METRIC_COLUMNS, *PARTIAL_COLUMNS) if rule(c)]
        taken |= set(groups[name])
    rest = [c for c in df.columns if c not in taken]
    groups["Run, notes and logs"] = rest
    lead = ["number", "layout"]
    return {
        k: [*lead, *[c for c in v if c not in lead]]
        for k, v in groups.items()
        if [c for c in v if c not in lead]
    }


def all_trials_section(df: pd.DataFrame, table: Callable[[pd.DataFrame], str]) -> str:
    """Every trial and column, by topic, folded: open the topic you need."""
    if df.empty:
        return "<h2>All trials</h2><p>The sweep has no trials.</p>"
    parts = [
        f"<details><summary>{html.escape(name)} ({len(cols) - 2}"
        f" columns)</summary>{table(df[cols])}</details>"
        for name, cols in topic_groups(df).items()
    ]
    return (
        "<h2>All trials</h2>"
        f"<details class='all'><summary>{len(df)} trials, every column, by topic "
        "(trials.csv holds the same)</summary>" + "".join(parts) + "</details>"
    )
