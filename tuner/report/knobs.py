"""Data step of "what each knob does": per searched knob, throughput by value; Optuna's
parameter importances; how fast the search converged.

A knob's effect is read two ways: along the best layout (the other knobs held at the best
layout's values, where that combination was measured), and over everything measured (the
spread over the other knobs' values). The first isolates the knob; the second says how much
the rest of the layout matters at that value.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
import pandas as pd

from tuner.report.frame import param_columns

#: Fewer completed, distinct layouts than this give importances that are noise: not computed.
MIN_TRIALS_FOR_IMPORTANCE = 5
KNOB_COLUMNS: tuple[str, ...] = (
    "knob",
    "value",
    "n",
    "median",
    "min",
    "max",
    "at_best",
    "at_best_layout",
    "is_best_value",
)


def _measured(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    ok = df[(df["state"] == "COMPLETE") & df["duplicate_of"].isna()]
    return ok[ok[metric].notna()]


def _same(a: Any, b: Any) -> bool:
    missing_a, missing_b = pd.isna(a), pd.isna(b)
    return bool(missing_a and missing_b) or (not missing_a and not missing_b and a == b)


def _value_order(values: pd.Series) -> list[Any]:
    distinct = list(dict.fromkeys(v for v in values if not pd.isna(v)))
    try:
        return sorted(distinct)
    except TypeError:  # mixed types: order of appearance
        return distinct


def knob_effects(
    df: pd.DataFrame, best: pd.Series | None, *, metric: str = "tokens_per_s"
) -> pd.DataFrame:
    """One row per (searched knob, value): ``metric`` over every measured layout with that
    value (n, median, min, max), and ``at_best``: that of the layout equal to ``best`` but
    for this knob (NaN where it was not measured)."""
    ok = _measured(df, metric)
    params = param_columns(df)
    rows = []
    for knob in params:
        others = [p for p in params if p != knob]
        for value in _value_order(ok[knob]):
            group = ok[[_same(v, value) for v in ok[knob]]]
            y = group[metric].to_numpy(dtype="float64")
            along = (
                group[[all(_same(r[p], best[p]) for p in others) for _, r in group.iterrows()]]
                if best is not None
                else group.iloc[:0]
            )
            rows.append(
                {
                    "knob": knob,
                    "value": value,
                    "n": len(group),
                    "median": float(np.median(y)),
                    "min": float(y.min()),
                    "max": float(y.max()),
                    "at_best": float(along[metric].iloc[0]) if len(along) else np.nan,
                    "at_best_layout": str(along["layout"].iloc[0]) if len(along) else "",
                    "is_best_value": best is not None and _same(best[knob], value),
                }
            )
    return pd.DataFrame(rows, columns=list(KNOB_COLUMNS))


def importances(study: optuna.Study, df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Optuna's importance of each searched parameter for the first objective (PED-ANOVA:
    needs no further dependency) and a note on how to read them, or an empty table and why
    they were not computed."""
    keep = set(_measured(df, "tokens_per_s")["number"].astype(int))
    trials = [t for t in study.get_trials(deepcopy=False) if t.number in keep and t.values]
    empty = pd.DataFrame({"param": [], "importance": []})
    if len(trials) < MIN_TRIALS_FOR_IMPORTANCE:
        return empty, (
            f"Not computed: {len(trials)} completed layout(s); importances need at least "
            f"{MIN_TRIALS_FOR_IMPORTANCE} to say more than noise."
        )
    varied = [p for p in param_columns(df) if len({str(t.params.get(p)) for t in trials}) > 1]
    if not varied:
        return empty, "Not computed: every completed layout has the same parameter values."
    own = optuna.create_study(directions=study.directions)
    own.add_trials(trials)
    # PED-ANOVA scores what it takes to reach low targets: a maximised objective is negated
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        scores = optuna.importance.get_param_importances(
            own, evaluator=evaluator, params=varied, target=lambda t: sign * t.values[0]
        )
    # the experimental notice and the reminder about low targets (handled above) say nothing
    # here; what else the evaluator warns of (too few trials in its quantiles) is the reader's
    said = [
        str(w.message)
        for w in caught
        if not issubclass(w.category, optuna.exceptions.ExperimentalWarning)
        and "low `target`" not in str(w.message)
    ]
    table = pd.DataFrame({"param": list(scores), "importance": list(scores.values())})
    return table, (
        f"PED-ANOVA over {len(trials)} completed layouts: how differently each parameter is "
        "distributed among the best layouts than among all of them (shares summing to 1); "
        "a parameter sampled in some layouts only is scored over those."
        + "".join(f" Optuna: {text}" for text in said)
    )


def convergence(
    df: pd.DataFrame, *, metric: str = "tokens_per_s", maximize: bool = True
) -> pd.DataFrame:
    """Best ``metric`` so far against the trial time spent so far (trial wall times summed in
    trial order; repeats cost nothing and are left out)."""
    own = df[df["duplicate_of"].isna()].sort_values("number", kind="stable")
    elapsed = own["duration_s"].astype("float64").fillna(0.0).cumsum()
    value = own[metric].astype("float64").where(own["state"] == "COMPLETE")
    best = value.cummax() if maximize else value.cummin()
    out = pd.DataFrame(
        {
            "number": own["number"].to_numpy(),
            "layout": own["layout"].to_numpy(),
            "elapsed_s": elapsed.to_numpy(),
            "value": value.to_numpy(),
            "best_so_far": best.to_numpy(),
        }
    )
    out = out[out["value"].notna()].reset_index(drop=True)
    before = out["best_so_far"].shift(1)
    better = out["value"] > before if maximize else out["value"] < before
    out["new_best"] = before.isna() | better  # strictly better: a tie finds nothing new
    return out
