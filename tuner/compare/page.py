"""The comparison page: several sweeps on one self-contained HTML page, in the sweep report's
style (plotly.js inlined once, opens offline). Data from ``compare.data``, figures from
``compare.figures``; this module only arranges them."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import pandas as pd

from tuner.compare import data, figures
from tuner.compare.sweeps import Sweep, conditions
from tuner.report.html import figure_html, page

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

GIB = 2**30


def _number(value: Any) -> str:
    return "" if value is None or pd.isna(value) else f"{value:,.0f}"


def _ratio(value: Any) -> str:
    return "" if value is None or pd.isna(value) else f"×{value:.2f}"


def _pct(value: Any) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.0f}%"


def _table(df: pd.DataFrame, formats: dict[str, Callable[[Any], str]]) -> str:
    """``df`` as an HTML table, each column through the first format whose name it ends with."""

    def fmt(column: str) -> Callable[[Any], str]:
        found = next((f for suffix, f in formats.items() if column.endswith(suffix)), None)
        return found or (lambda v: "" if v is None or pd.isna(v) else str(v))

    shown = pd.DataFrame({c: df[c].map(fmt(c)) for c in df.columns}, columns=df.columns)
    table = shown.to_html(index=False, escape=True, na_rep="", border=0)
    return f'<div class="scroll">{table}</div>'


def _sweeps_table(sweeps: Sequence[Sweep]) -> str:
    differ = conditions(sweeps)
    rows = []
    for s in sweeps:
        best = s.best
        counts = ", ".join(f"{n} {state}" for state, n in s.summary.state_counts.items())
        rows.append(
            {
                "sweep": s.name,
                "model": s.model.get("name", ""),
                "held at": " ".join(f"{k}={s.fixed[k]}" for k in differ),
                "searched": ", ".join(s.searched),
                "trials": counts,
                "fastest layout": best.label if best else "none completed",
                "tokens/s": best.tokens_per_s if best else None,
                "measured on": s.machine,
            }
        )
    return _table(pd.DataFrame(rows), {"tokens/s": _number})


def _winner_section(sweeps: Sequence[Sweep], side: pd.DataFrame) -> list[str]:
    won = data.winners(sweeps, side)
    head = "<h2>Where the winner changes</h2>"
    if won.empty:
        return [head, "<p>No sweep has a completed trial.</p>"]
    if len(won) == 1:
        verdict = (
            f"<p>The same layout is fastest in every sweep: "
            f"<strong>{html.escape(won['layout'].iloc[0])}</strong>.</p>"
        )
    else:
        each = "; ".join(
            f"{html.escape(r['wins in'])}: <strong>{html.escape(r['layout'])}</strong>"
            for _, r in won.iterrows()
        )
        verdict = f"<p><strong>The winner changes</strong> — {each}.</p>"
    return [
        head,
        verdict,
        '<p class="muted">Each winner\'s throughput in every sweep, as a share of that '
        "sweep's fastest (blank: that sweep did not measure it).</p>",
        _table(won, {"": _pct_or_text}),
    ]


def _pct_or_text(value: Any) -> str:
    return _pct(value) if isinstance(value, float) else ("" if value is None else str(value))


def _side_section(side: pd.DataFrame, names: Sequence[str]) -> list[str]:
    head = "<h2>The same layouts side by side</h2>"
    if side.empty:
        return [head, "<p>No layout was measured by two of these sweeps.</p>"]
    n = side["layout"].nunique()
    return [
        head,
        f'<p class="muted">{n} layouts measured by at least two sweeps. Ratios are tokens/s '
        f"over {html.escape(names[0])}'s for the same layout; a hollow marker means the two "
        "intervals overlap: the measurements do not tell them apart.</p>",
        figure_html(figures.throughput(side, names)),
        figure_html(figures.ratios(side, names)) if len(names) > 1 else "",
        "<details><summary>Table</summary>"
        + _table(data.side_table(side, names), {"tokens/s": _number, f"/ {names[0]}": _ratio})
        + "</details>",
    ]


def _knob_section(sweeps: Sequence[Sweep], names: Sequence[str]) -> list[str]:
    effects = data.knob_effects(sweeps)
    head = "<h2>What each knob does, compared</h2>"
    if effects.empty:
        return [head, "<p>None of these sweeps searched a knob with a completed trial.</p>"]
    return [
        head,
        '<p class="muted">For each value of a searched knob, the fastest trial that had it, as '
        "a share of its sweep's best: a knob whose bars move together matters the same way in "
        "every sweep; one whose order flips is where the sweeps disagree.</p>",
        figure_html(figures.knob_effects(effects, names)),
        "<details><summary>Table</summary>"
        + _table(effects, {"_pct": _pct, "tokens_per_s": _number})
        + "</details>",
    ]


def render(sweeps: Sequence[Sweep], *, note: str = "") -> str:
    """The page for ``sweeps`` (the first is the reference); ``note`` is said first (e.g.
    that the models differ and the comparison was forced)."""
    names = [s.name for s in sweeps]
    side = data.side_by_side(sweeps)
    title = " vs ".join(names)
    differ = conditions(sweeps)
    body = [
        f"<h1>Sweeps compared: {html.escape(title)}</h1>",
        f"<p><strong>{html.escape(note)}</strong></p>" if note else "",
        '<p class="muted">'
        + (
            "Held at different values: " + html.escape(", ".join(differ)) + ". "
            if differ
            else "No fixed setting differs between them. "
        )
        + f"Reference: {html.escape(names[0])}. Fastest means the most tokens/s.</p>",
        _sweeps_table(sweeps),
        *_winner_section(sweeps, side),
        *_side_section(side, names),
        *_knob_section(sweeps, names),
    ]
    return page(f"paratune: {title}", body)
