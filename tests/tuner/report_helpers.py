"""Building blocks for report tests: real Optuna trials with the tuner's attributes, the
figures stored as the sweep stores them (one result attribute per trial)."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from engine import result_schema
from tuner.study import RESULT_ATTR

BASE = ["model=tiny", "train.global_batch=8", "train.steps=6"]
DISTS = {
    "parallel.dp": IntDistribution(1, 4),
    "train.micro_batch": IntDistribution(1, 8),
    "train.precision": CategoricalDistribution(["fp32", "bf16", "fp16"]),
    "parallel.tp": IntDistribution(1, 2),
}
OOM_DETAIL = "RuntimeError: <CUDA> out of memory & more"
_COLUMNS = {c.name for c in result_schema.columns()}


def _add(
    study: optuna.Study,
    state: TrialState,
    params: dict[str, Any],
    *,
    tps: float | None = None,
    mem: int | None = None,
    **attrs: Any,
) -> None:
    if tps is not None:
        attrs["tokens_per_s"] = tps
    if mem is not None:
        attrs["peak_mem_bytes"] = mem
    # figures (by field or column name) go into the stored result, the rest onto the trial
    figures = {k: v for k, v in attrs.items() if k in result_schema.FIELD or k in _COLUMNS}
    user_attrs = {k: v for k, v in attrs.items() if k not in figures}
    if figures:
        user_attrs[RESULT_ATTR] = result_schema.from_columns(figures)
    study.add_trial(
        create_trial(
            state=state,
            values=[tps if tps is not None else 0.0] if state == TrialState.COMPLETE else None,
            params=params,
            distributions={k: DISTS[k] for k in params},
            user_attrs=user_attrs,
        )
    )


def _p(dp: int, mb: int, prec: str = "bf16", **extra: Any) -> dict[str, Any]:
    return {
        "parallel.dp": dp,
        "train.micro_batch": mb,
        "train.precision": prec,
        **extra,
    }
