"""Data step of the sweep report: turn an Optuna study into DataFrames and dataclasses
(the table of trials itself: ``frame.py``).

Nothing here draws. The figures (``figures.py``) and the page (``html.py``) only consume what these
functions return, so the numbers can be tested without rendering anything (the split Optuna's
``visualization`` package uses between ``_get_*_info`` and the plotly step).
"""

from __future__ import annotations

import logging
import numbers
import re
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from engine.units import MIB
from tuner.machine import describe_record
from tuner.report.frame import (
    DEAD_WORKER_STATE,
    METRIC_COLUMNS,
    is_int,
    param_columns,
    trials_frame,
)
from tuner.study import stored_result

if TYPE_CHECKING:
    from collections.abc import Sequence

    import optuna

logger = logging.getLogger(__name__)

FAILED_STATES: tuple[str, ...] = ("FAIL", "PRUNED", DEAD_WORKER_STATE)
#: Display order for state counts; unknown states follow in order of appearance.
STATE_ORDER: tuple[str, ...] = (
    "COMPLETE",
    "FAIL",
    "PRUNED",
    "RUNNING",
    DEAD_WORKER_STATE,
    "WAITING",
)
RUN_COMMAND = "python -m tuner run"

# Values Hydra's override grammar accepts unquoted; anything else gets Hydra single quotes.
_HYDRA_PLAIN = re.compile(r"^[\w.+\-/:@]+$")


@dataclass(frozen=True)
class SweepSummary:
    """Headline facts about one sweep, for the report title and the CLI."""

    sweep_name: str
    n_trials: int
    state_counts: dict[str, int]
    n_distinct_configs: int
    objectives: tuple[str, ...]
    directions: tuple[str, ...]  # "maximize" / "minimize", aligned with ``objectives``
    base_overrides: tuple[str, ...]
    best_metric: str  # the metric the best trial was chosen by
    best_maximize: bool
    best_number: int | None = None
    best_command: str | None = None
    params: tuple[str, ...] = field(default_factory=tuple)


def _completed(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["state"] == "COMPLETE"]


def pareto_front(
    df: pd.DataFrame, *, x: str = "peak_mem_bytes", y: str = "tokens_per_s"
) -> pd.DataFrame:
    """Non-dominated COMPLETE, non-duplicate trials (``x`` lower and ``y`` higher is better).

    Sorted by ``x``. Points equal in both coordinates are kept once (the lowest trial number).
    """
    ok = _completed(df)
    ok = ok[ok["duplicate_of"].isna() & ok[x].notna() & ok[y].notna()]
    # Sweep in order of x; within equal x the highest y comes first, within exact ties the lowest
    # number. A point is on the front iff it beats every point before it on y.
    ordered = ok.sort_values([x, y, "number"], ascending=[True, False, True], kind="stable")
    keep: list[Any] = []
    best_y: float | None = None
    for index, value in ordered[y].items():
        if best_y is None or value > best_y:
            keep.append(index)
            best_y = value
    return ordered.loc[keep].reset_index(drop=True)


def best_trial(
    df: pd.DataFrame, *, metric: str = "tokens_per_s", maximize: bool = True
) -> pd.Series | None:
    """The COMPLETE trial with the best ``metric`` (ties: lowest number); None if there is none."""
    ok = _completed(df)
    ok = ok[ok[metric].notna()]
    if ok.empty:
        return None
    ordered = ok.sort_values([metric, "number"], ascending=[not maximize, True], kind="stable")
    return ordered.iloc[0]


def indistinguishable_from(df: pd.DataFrame, best: pd.Series) -> list[int]:
    """Other COMPLETE, non-repeat trials whose tokens/s interval overlaps ``best``'s: the
    measurements cannot tell them apart from the best one."""
    low, high = best.get("tokens_per_s_ci_low"), best.get("tokens_per_s_ci_high")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return []
    ok = _completed(df)
    ok = ok[ok["duplicate_of"].isna() & ok["tokens_per_s_ci_low"].notna()]
    overlap = (ok["tokens_per_s_ci_low"] <= high) & (ok["tokens_per_s_ci_high"] >= low)
    return [int(n) for n in ok.loc[overlap, "number"] if int(n) != int(best["number"])]


def collective_table(study: optuna.Study, number: int) -> tuple[pd.DataFrame, list[str]]:
    """Per-collective figures of one trial (per step, per rank) and the caveats that go with
    them, from the ``comm`` and ``comm_notes`` the engine reported."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    result = stored_result(trial) if trial else {}
    comm = result.get("comm") or {}

    def r3(value: Any) -> Any:  # readable precision; the run JSON keeps the raw figures
        return None if value is None else round(float(value), 3)

    rows = [
        {
            "collective": kind,
            "count": stats.get("count"),
            "MiB": r3(stats.get("bytes", 0) / MIB),
            "time_ms": r3(1e3 * stats.get("time_s", 0)),
            "exposed_ms": r3(1e3 * stats["exposed_s"]) if "exposed_s" in stats else None,
            "algbw_GBps": r3(stats.get("algbw_gbps")),
            "busbw_GBps": r3(stats.get("busbw_gbps")),
        }
        for kind, stats in sorted(comm.items())
    ]
    notes = list(result.get("comm_notes") or [])
    return pd.DataFrame(rows), notes


@dataclass(frozen=True)
class MachineUsed:
    """A machine that measured trials of the sweep (see tuner/machine.py)."""

    id: str
    description: str
    first_seen: str
    trials: tuple[int, ...]


def machines_used(study: optuna.Study, df: pd.DataFrame) -> list[MachineUsed]:
    """The machines recorded in the study, in the order they joined, with their trials."""
    out = []
    for mid, record in (study.user_attrs.get("machines") or {}).items():
        numbers = tuple(int(n) for n in df.loc[df["machine"] == mid, "number"])
        out.append(
            MachineUsed(mid, describe_record(record), str(record.get("first_seen")), numbers)
        )
    return out


def format_value(value: Any) -> str:
    """Render a parameter value the way Hydra reads it on the command line."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if is_int(value):
        return str(int(value))
    if isinstance(value, numbers.Real):
        # Integer-valued floats come from pandas widening an int column that has gaps; Hydra's
        # float fields accept an integer literal, so printing "2" is right either way.
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = str(value)
    if _HYDRA_PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def reproduce_command(
    row: pd.Series, *, params: Sequence[str], base_overrides: Sequence[str]
) -> str:
    """Shell command that reruns the trial in ``row``: base overrides, then each searched param.

    Parameters the trial did not sample (missing in ``row``) are left out.
    """
    overrides = list(base_overrides)
    overrides += [f"{k}={format_value(row[k])}" for k in params if not _missing(row.get(k))]
    return " ".join([RUN_COMMAND, *(shlex.quote(o) for o in overrides)])


def failure_table(df: pd.DataFrame) -> pd.DataFrame:
    """FAIL and PRUNED trials with why they failed, their parameters and where their logs are."""
    columns = ["number", "state", "fail_reason", "fail_detail", *param_columns(df), "log_dir"]
    return df.loc[df["state"].isin(FAILED_STATES), columns].reset_index(drop=True)


def state_counts(df: pd.DataFrame) -> dict[str, int]:
    """Trials per state, in a fixed reading order, omitting states with no trial."""
    counts = df["state"].value_counts(sort=False).to_dict()
    order = [s for s in STATE_ORDER if s in counts] + [s for s in counts if s not in STATE_ORDER]
    return {s: int(counts[s]) for s in order}


def _n_distinct(df: pd.DataFrame, params: Sequence[str]) -> int:
    if df.empty:
        return 0
    if not params:
        return 1  # nothing searched: every trial ran the base configuration
    return len(df[list(params)].astype(str).drop_duplicates())


def summarize(study: optuna.Study, df: pd.DataFrame | None = None) -> SweepSummary:
    """Summarise the sweep; the best trial is chosen by the first objective.

    Falls back to ``tokens_per_s`` (maximised) when the study names no objective that is a metric.
    """
    if df is None:
        df = trials_frame(study)
    attrs = study.user_attrs
    objectives = tuple(attrs.get("objectives") or ())
    directions = tuple(d.name.lower() for d in study.directions)
    metric, maximize = "tokens_per_s", True
    if objectives and objectives[0] in METRIC_COLUMNS:
        metric = objectives[0]
        maximize = directions[0] != "minimize" if directions else True
    elif objectives:
        logger.warning("objective %r is not a metric; best trial by tokens_per_s", objectives[0])
    params = param_columns(df)
    base = tuple(attrs.get("base_overrides") or ())
    best = best_trial(df, metric=metric, maximize=maximize)
    return SweepSummary(
        sweep_name=str(attrs.get("sweep_name") or study.study_name),
        n_trials=len(df),
        state_counts=state_counts(df),
        n_distinct_configs=_n_distinct(df, params),
        objectives=objectives,
        directions=directions,
        base_overrides=base,
        best_metric=metric,
        best_maximize=maximize,
        best_number=None if best is None else int(best["number"]),
        best_command=(
            None if best is None else reproduce_command(best, params=params, base_overrides=base)
        ),
        params=tuple(params),
    )
