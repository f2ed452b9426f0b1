"""One row per trial: the table behind trials.csv and the report.

The figure columns come from the run result's schema (engine/result_schema.py): every figure
it marks as a column, read from the result stored on each trial, in the schema's order. What
is not a figure of a run (the trial's state, parameters, machine, duration, logs) comes from
the trial itself.
"""

from __future__ import annotations

import logging
import numbers
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from engine import result_schema
from tuner import early_stop
from tuner.layout_name import trial_names
from tuner.placement import CORES_ATTR, LOAD_ATTR, busy
from tuner.study import WORKER_ATTR, stored_result, worker_alive

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import optuna

logger = logging.getLogger(__name__)

_METRICS = result_schema.columns("metric")
_NOTES = result_schema.columns("note")
#: Per-trial figures (units in the names), one column each: the schema's metric columns.
METRIC_COLUMNS: tuple[str, ...] = tuple(c.name for c in _METRICS)
#: ``layout``: the run in words (tuner.layout_name), how figures and tables name a trial.
LEAD_COLUMNS: tuple[str, ...] = (
    "number",
    "state",
    "fail_reason",
    "fail_detail",
    "duplicate_of",
    "layout",
)
#: What the figures mean for this trial: the machine that measured it, its load when the trial
#: started and whether that was above its cores (tuner.placement), then the schema's note
#: columns (what the memory prediction was compared with, whether the timed steps ran under
#: the profiler, and why a blank figure is blank).
NOTE_COLUMNS: tuple[str, ...] = ("machine", LOAD_ATTR, "busy", *(c.name for c in _NOTES))
#: A trial stopped early (tuner/early_stop.py): its timed steps before it was stopped, and
#: the median tokens/s over them with its interval; blank for every other trial.
PARTIAL_COLUMNS: tuple[str, ...] = (
    "partial_steps",
    "partial_tokens_per_s",
    "partial_tokens_per_s_ci_low",
    "partial_tokens_per_s_ci_high",
)
TAIL_COLUMNS: tuple[str, ...] = (*PARTIAL_COLUMNS, "duration_s", "overhead_s", "log_dir")
#: A RUNNING trial whose worker on this host has died: shown, not changed (reporting is
#: read-only; the next sweep run with the same sweep.name fails and requeues it).
DEAD_WORKER_STATE = "RUNNING (worker dead)"


def is_int(value: Any) -> bool:
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
    if present and all(is_int(v) for v in present):
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


def _why_blank(not_measured: dict[str, str] | None) -> str | None:
    """ "reason: figure, figure; reason: figure" from a result's ``not_measured``."""
    if not not_measured:
        return None
    by_reason: dict[str, list[str]] = {}
    for key, why in not_measured.items():
        by_reason.setdefault(why, []).append(key)
    return "; ".join(f"{why}: {', '.join(keys)}" for why, keys in by_reason.items())


def _note(column: result_schema.Column, values: list[Any]) -> pd.Series:
    """A note column: flags stay flags (blank where unknown), reasons become one line."""
    if column.field == "not_measured":
        return _column([_why_blank(v) for v in values], numeric=False)
    if result_schema.FIELD[column.field].unit == "flag":
        return pd.Series(values, dtype="boolean")
    return _column(values, numeric=False)


def _param_names(trials: Iterable[optuna.trial.FrozenTrial]) -> list[str]:
    # Order of first appearance keeps the sampler's order of parameters, which reads naturally.
    names: dict[str, None] = {}
    for trial in trials:
        names.update(dict.fromkeys(trial.params))
    return list(names)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, ordered by number: bookkeeping, searched parameters, figures."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    results = [stored_result(t) for t in trials]

    def attr(name: str) -> list[Any]:
        return [t.user_attrs.get(name) for t in trials]

    dead = [_dead_worker(t) for t in trials]
    names = trial_names(study)
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
        "layout": pd.Series([names[t.number] for t in trials], dtype=object),
    }
    for name in _param_names(trials):
        columns[name] = _column([t.params.get(name) for t in trials], numeric=False)
    for col in _METRICS:
        columns[col.name] = _column([col.read(r) for r in results], numeric=True, name=col.name)
    columns["machine"] = _column(attr("machine"), numeric=False)
    columns[LOAD_ATTR] = _column(attr(LOAD_ATTR), numeric=True).astype("float64")
    busy_at_start = [
        None if load is None else busy(load, cores)
        for load, cores in zip(attr(LOAD_ATTR), attr(CORES_ATTR))
    ]
    columns["busy"] = pd.Series(busy_at_start, dtype="boolean")
    for col in _NOTES:
        columns[col.name] = _note(col, [col.read(r) for r in results])
    columns.update(_partial(attr))
    columns["duration_s"] = _column(attr("duration_s"), numeric=True).astype("float64")
    columns["overhead_s"] = _column(attr("overhead_s"), numeric=True).astype("float64")
    columns["log_dir"] = _column(attr("log_dir"), numeric=False)
    return pd.DataFrame(columns)


def _partial(attr: Callable[[str], list[Any]]) -> dict[str, pd.Series]:
    """The partial figures of trials stopped early (tuner.early_stop's attributes)."""
    ci = [v if v else [None, None] for v in attr(early_stop.PARTIAL_CI)]
    values = [
        attr(early_stop.PARTIAL_STEPS),
        attr(early_stop.PARTIAL_TPS),
        [low for low, _ in ci],
        [high for _, high in ci],
    ]
    return {
        name: _column(v, numeric=True, name=name)
        for name, v in zip(PARTIAL_COLUMNS, values, strict=True)
    }


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


def busy_trials(df: pd.DataFrame) -> list[int]:
    """Numbers of the completed trials that started on a busy machine (load above cores):
    other work shared its cores, and its figures may read low."""
    flagged = df[(df["state"] == "COMPLETE") & df["busy"].fillna(False).astype(bool)]
    return [int(n) for n in flagged["number"]]
