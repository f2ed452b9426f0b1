"""The report's answer to "is the winner really the winner?": the side-by-side re-measurement
of the layouts close to the best (``tuner.confirm``, `sweep.confirm_top`), stored in the study,
as a short section under the leaderboard — the winner with its range, or plainly that the top
layouts cannot be told apart on this machine."""

from __future__ import annotations

import html
import statistics
from dataclasses import dataclass

import optuna
import pandas as pd

from tuner.study import CONFIRM_ATTR  # not tuner.confirm: it launches, and loads torch


@dataclass(frozen=True)
class ConfirmedRow:
    trial: int
    layout: str
    median_tokens_per_s: float
    low: float
    high: float
    launches: int


def confirmation_rows(study: optuna.Study, df: pd.DataFrame) -> tuple[list[ConfirmedRow], dict]:
    """The re-measured layouts, best median first, and the stored verdict ({} if none)."""
    record = study.user_attrs.get(CONFIRM_ATTR) or {}
    names = dict(zip(df["number"], df["layout"], strict=True)) if len(df) else {}
    rows = []
    for c in record.get("contenders", []):
        runs = [float(v) for v in c["tokens_per_s"]]
        if runs:
            rows.append(
                ConfirmedRow(
                    c["trial"],
                    str(names.get(c["trial"], f"trial {c['trial']}")),
                    statistics.median(runs),
                    min(runs),
                    max(runs),
                    len(runs),
                )
            )
    rows.sort(key=lambda r: -r.median_tokens_per_s)
    return rows, record


def confirmation_line(study: optuna.Study, df: pd.DataFrame) -> str | None:
    """The verdict in one console line, with the winner's range (None without one)."""
    rows, record = confirmation_rows(study, df)
    if not rows:
        return None
    winner = record.get("winner")
    if winner is None:
        return (
            f"not confirmed: the top {len(rows)} cannot be told apart on this machine (their "
            "ranges overlap when measured again side by side)"
        )
    w = next(r for r in rows if r.trial == winner)
    return (
        f"confirmed: {w.layout} wins, {w.median_tokens_per_s:,.0f} tokens/s "
        f"({w.low:,.0f}-{w.high:,.0f} over {w.launches} launches side by side with the "
        f"{len(rows) - 1} closest)"
    )


def confirmation_section(study: optuna.Study, df: pd.DataFrame) -> str:
    rows, record = confirmation_rows(study, df)
    if not rows:
        return ""
    winner = record.get("winner")
    if winner is not None:
        w = next(r for r in rows if r.trial == winner)
        lead = (
            f"<p><b>Confirmed:</b> {html.escape(w.layout)} wins — its slowest launch "
            f"({w.low:,.0f} tokens/s) beats every other layout's fastest when they are "
            "measured again side by side.</p>"
        )
    else:
        lead = (
            f"<p><b>Not confirmed:</b> the top {len(rows)} layouts cannot be told apart on this "
            "machine: their ranges overlap when measured again side by side. Any of them is "
            "as good a choice here; prefer the one with less memory or simpler parallelism.</p>"
        )
    body = "".join(
        f"<tr><td>{html.escape(r.layout)}</td><td>{r.median_tokens_per_s:,.0f}</td>"
        f"<td>{r.low:,.0f}–{r.high:,.0f}</td><td>{r.launches}</td></tr>"
        for r in rows
    )
    return (
        "<h2>Confirmation</h2>"
        + lead
        + "<table><tr><th>layout</th><th>median tokens/s</th><th>range</th>"
        + "<th>launches</th></tr>"
        + body
        + "</table>"
    )
