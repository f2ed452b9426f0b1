"""Data step of the report's first table: every launched layout, best first, in words.

Ranked by the sweep's objective (tokens/s unless the first objective says otherwise); the
layouts whose 95% throughput interval overlaps the best one's are marked: the measurements
cannot tell them apart from it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tuner.early_stop import EARLY_STOP
from tuner.report.data import indistinguishable_from

#: The leaderboard's columns, units in the names (``_pct``: per cent; ``_share``: 0..1).
COLUMNS: tuple[str, ...] = (
    "rank",
    "number",
    "layout",
    "tokens_per_s",
    "tokens_per_s_ci_low",
    "tokens_per_s_ci_high",
    "tokens_per_s_ci_coverage",
    "pct_of_best",
    "peak_mem_bytes",
    "mfu",
    "comm_exposed_share",
    "state",
    "tied_with_best",
)
# trials that ran nothing of their own: repeats and layouts the sweep never launched (those
# stopped early were launched: shown with their partial figures)
_SKIPPED = ("PRUNED",)
# a trial stopped early shows its partial figures in the throughput columns
_PARTIAL = {
    "tokens_per_s": "partial_tokens_per_s",
    "tokens_per_s_ci_low": "partial_tokens_per_s_ci_low",
    "tokens_per_s_ci_high": "partial_tokens_per_s_ci_high",
}


def exposed_share(df: pd.DataFrame) -> pd.Series:
    """Exposed communication as a share of the step time of the same (profiled) steps; the
    stopwatch's median step time where the profiled steps were not timed."""
    step = df["breakdown_step_s"].astype("float64").fillna(df["step_time_s"].astype("float64"))
    return df["comm_exposed_s"].astype("float64") / step


def _state(row: pd.Series) -> str:
    reason = row["fail_reason"]
    if reason == EARLY_STOP:
        return f"PRUNED early, partial figures: {row['fail_detail']}"
    return str(row["state"]) if pd.isna(reason) else f"{row['state']} ({reason})"


def leaderboard(
    df: pd.DataFrame, *, metric: str = "tokens_per_s", maximize: bool = True
) -> pd.DataFrame:
    """One row per launched layout (repeats and pruned layouts left out): the COMPLETE ones
    ranked by ``metric``, then those that failed or still run, by trial number, unranked."""
    early = df["fail_reason"] == EARLY_STOP
    own = df[df["duplicate_of"].isna() & (~df["state"].isin(_SKIPPED) | early)]
    done = own[(own["state"] == "COMPLETE") & own[metric].notna()]
    done = done.sort_values([metric, "number"], ascending=[not maximize, True], kind="stable")
    rest = own.drop(index=done.index).sort_values("number", kind="stable")
    rows = pd.concat([done, rest])
    out = pd.DataFrame(
        {
            "rank": pd.array([*range(1, len(done) + 1), *[pd.NA] * len(rest)], dtype="Int64"),
            "number": rows["number"].to_numpy(),
            "layout": rows["layout"].to_numpy(),
        }
    )
    for col in COLUMNS[3:7]:  # throughput, its interval and the interval's coverage
        values = rows[col].astype("float64")
        if col in _PARTIAL and _PARTIAL[col] in rows:
            values = values.fillna(rows[_PARTIAL[col]].astype("float64"))
        out[col] = values.to_numpy(dtype="float64", na_value=np.nan)
    best_tps = out["tokens_per_s"].iloc[0] if len(done) else np.nan
    out["pct_of_best"] = 100 * out["tokens_per_s"] / best_tps
    out["peak_mem_bytes"] = rows["peak_mem_bytes"].to_numpy(dtype="float64", na_value=np.nan)
    out["mfu"] = rows["mfu"].to_numpy(dtype="float64", na_value=np.nan)
    out["comm_exposed_share"] = exposed_share(rows).to_numpy(dtype="float64", na_value=np.nan)
    out["state"] = [_state(r) for _, r in rows.iterrows()]
    ties = set(indistinguishable_from(df, done.iloc[0])) if len(done) else set()
    out["tied_with_best"] = [int(n) in ties for n in out["number"]]
    return out[list(COLUMNS)]


def top(board: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """The ``n`` best ranked rows."""
    return board[board["rank"].notna()].head(n)


def interval_text(row: pd.Series) -> str:
    """``1,234 tokens/s [1,200, 1,260] (95%)``: the interval and its coverage where measured."""
    text = f"{row['tokens_per_s']:,.0f} tokens/s"
    low, high = row["tokens_per_s_ci_low"], row["tokens_per_s_ci_high"]
    if not (pd.isna(low) or pd.isna(high)):
        text += f" [{low:,.0f}, {high:,.0f}]"
        cover = row["tokens_per_s_ci_coverage"]
        text += "" if pd.isna(cover) else f" ({cover:.0%})"
    return text
