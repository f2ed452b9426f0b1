"""Data step of the sweep report: turn an Optuna study into DataFrames and dataclasses.

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
from optuna.trial import FrozenTrial, TrialState

from tuner.machine import describe_record
from tuner.study import WORKER_ATTR
from tuner.study import _worker_alive as worker_alive

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import optuna

logger = logging.getLogger(__name__)

#: Per-trial metrics written into ``trial.user_attrs`` by the runner (units in the names).
METRIC_COLUMNS: tuple[str, ...] = (
    "tokens_per_s",
    "tokens_per_s_min",
    "tokens_per_s_max",
    "tokens_per_s_ci_low",
    "tokens_per_s_ci_high",
    "tokens_per_s_ci_coverage",
    "tokens_per_s_cv",
    "step_time_s",
    "peak_mem_bytes",
    "comm_count",
    "comm_bytes",
    "comm_time_s",
    "comm_exposed_s",
    "breakdown_forward_s",
    "breakdown_backward_s",
    "breakdown_optimizer_s",
    "breakdown_comm_exposed_s",
    "breakdown_bubble_s",
    "breakdown_data_s",
    "breakdown_step_s",
    "breakdown_sum_error",
    "tensor_peak_bytes",
    "predicted_peak_mem_bytes",
    "mem_compared_bytes",
    "mem_params_bytes",
    "mem_grads_bytes",
    "mem_optimizer_bytes",
    "mem_activations_bytes",
    "mem_prediction_error",
    "mfu",
    "hfu",
    "flops_per_token",
    "n_params",
    "world_size",
    "final_loss",
)
LEAD_COLUMNS: tuple[str, ...] = ("number", "state", "fail_reason", "fail_detail", "duplicate_of")
#: What the figures above mean for this trial: what the memory prediction was compared with,
#: whether the timed steps ran under the profiler, and why a blank figure is blank.
NOTE_COLUMNS: tuple[str, ...] = (
    "machine",
    "mem_prediction_compared_to",
    "timing_includes_profiler",
    "not_measured",
)
TAIL_COLUMNS: tuple[str, ...] = ("duration_s", "log_dir")
#: A RUNNING trial whose worker on this host has died: shown, not changed (reporting is
#: read-only; the next sweep run with the same sweep.name fails and requeues it).
DEAD_WORKER_STATE = "RUNNING (worker dead)"
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


def _is_int(value: Any) -> bool:
    # bool is an Integral too, but a column of flags must not become 0/1.
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _column(values: list[Any], *, numeric: bool, name: str = "") -> pd.Series:
    """Build one column, keeping integers integer even when some trials lack the value.

    A plain float column would turn ``peak_mem_bytes`` 4294967296 into ``4294967296.0`` in the CSV
    and ``parallel.dp`` 2 into ``2.0`` in overrides, so integer-only columns use nullable ``Int64``.
    """
    present = [v for v in values if v is not None]
    if present and all(_is_int(v) for v in present):
        return pd.Series(values, dtype="Int64", name=name)
    if present and all(_is_real(v) for v in present):
        return pd.Series(values, dtype="float64", name=name)
    if not numeric:
        return pd.Series(values, dtype=object if present else "float64", name=name)
    series = pd.to_numeric(pd.Series(values, dtype=object, name=name), errors="coerce")
    n_bad = int(series.isna().sum()) - (len(values) - len(present))
    if n_bad:
        logger.warning("%d value(s) of metric %r are not numbers; shown as missing", n_bad, name)
    return series.astype("float64")


def _param_names(trials: Iterable[optuna.trial.FrozenTrial]) -> list[str]:
    # Order of first appearance keeps the sampler's order of parameters, which reads naturally.
    names: dict[str, None] = {}
    for trial in trials:
        names.update(dict.fromkeys(trial.params))
    return list(names)


def _why_blank(not_measured: dict[str, str] | None) -> str | None:
    """ "reason: figure, figure; reason: figure" from a result's ``not_measured``."""
    if not not_measured:
        return None
    by_reason: dict[str, list[str]] = {}
    for key, why in not_measured.items():
        by_reason.setdefault(why, []).append(key)
    return "; ".join(f"{why}: {', '.join(keys)}" for why, keys in by_reason.items())


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, ordered by number: bookkeeping, searched parameters, metrics."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)

    def attr(name: str) -> list[Any]:
        return [t.user_attrs.get(name) for t in trials]

    dead = [_dead_worker(t) for t in trials]
    columns: dict[str, pd.Series] = {
        "number": pd.Series([t.number for t in trials], dtype="int64"),
        "state": pd.Series(
            [DEAD_WORKER_STATE if d else t.state.name for t, d in zip(trials, dead)], dtype=object
        ),
        "fail_reason": _column(
            ["interrupted" if d else r for r, d in zip(attr("fail_reason"), dead)], numeric=False
        ),
        "fail_detail": _column(
            [
                f"worker {d} is no longer running; the next sweep run queues it again" if d else v
                for v, d in zip(attr("fail_detail"), dead)
            ],
            numeric=False,
        ),
        "duplicate_of": pd.Series(attr("duplicate_of"), dtype="Int64"),
    }
    for name in _param_names(trials):
        columns[name] = _column([t.params.get(name) for t in trials], numeric=False)
    for name in (*METRIC_COLUMNS, "duration_s"):
        columns[name] = _column(attr(name), numeric=True, name=name)
    columns["machine"] = _column(attr("machine"), numeric=False)
    columns["mem_prediction_compared_to"] = _column(
        attr("mem_prediction_compared_to"), numeric=False
    )
    columns["timing_includes_profiler"] = pd.Series(
        attr("timing_includes_profiler"), dtype="boolean"
    )
    columns["not_measured"] = _column([_why_blank(v) for v in attr("not_measured")], numeric=False)
    columns["duration_s"] = columns.pop("duration_s").astype("float64")
    columns["log_dir"] = _column(attr("log_dir"), numeric=False)
    return pd.DataFrame(columns)


def _dead_worker(trial: FrozenTrial) -> str | None:
    """The worker ("host:pid") of a RUNNING trial if it has died on this host, else None."""
    worker = trial.user_attrs.get(WORKER_ATTR)
    if trial.state != TrialState.RUNNING or not worker or worker_alive(worker):
        return None
    return worker


def param_columns(df: pd.DataFrame) -> list[str]:
    """The searched-parameter columns of a :func:`trials_frame` (everything not fixed)."""
    fixed = set(LEAD_COLUMNS) | set(METRIC_COLUMNS) | set(NOTE_COLUMNS) | set(TAIL_COLUMNS)
    return [c for c in df.columns if c not in fixed]


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
    comm = (trial.user_attrs.get("comm") if trial else None) or {}

    def r3(value: Any) -> Any:  # readable precision; the run JSON keeps the raw figures
        return None if value is None else round(float(value), 3)

    rows = [
        {
            "collective": kind,
            "count": stats.get("count"),
            "MiB": r3(stats.get("bytes", 0) / 2**20),
            "time_ms": r3(1e3 * stats.get("time_s", 0)),
            "exposed_ms": r3(1e3 * stats["exposed_s"]) if "exposed_s" in stats else None,
            "algbw_GBps": r3(stats.get("algbw_gbps")),
            "busbw_GBps": r3(stats.get("busbw_gbps")),
        }
        for kind, stats in sorted(comm.items())
    ]
    notes = list((trial.user_attrs.get("comm_notes") if trial else None) or [])
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
    if _is_int(value):
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
