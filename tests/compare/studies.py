"""Sweeps built directly as Optuna studies, with what a real sweep stores on them (the fixed
settings, the searched keys, each trial's whole result with its configuration), for the
comparison's data tests: no engine run is needed to know which layouts two sweeps share."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from engine.config import PRECISIONS, RunConfig
from tests.helpers import tiny_config
from tuner.study import RESULT_ATTR

SEARCHED = ("parallel.dp", "train.micro_batch")


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        data = data[p]
    data[leaf] = value


def _drop(data: dict[str, Any], key: str) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        data = data[p]
    data.pop(leaf)


def sweep_study(
    name: str,
    measured: dict[tuple[Any, ...], float],
    *,
    fixed: dict[str, Any] | None = None,
    searched: tuple[str, ...] = SEARCHED,
    spread: float = 0.03,
    storage: str | None = None,
) -> optuna.Study:
    """A sweep named ``name`` whose completed trials ran the ``searched`` values in each key of
    ``measured`` at that many tokens/s (interval ± ``spread``), with ``fixed`` settings
    ({dotted key: value}) held for the whole sweep."""
    base = tiny_config(train={"global_batch": 8}).to_dict()
    for key, value in (fixed or {}).items():
        _set(base, key, value)
    held = RunConfig.from_dict(base).to_dict()
    held.pop("out")
    for key in searched:
        _drop(held, key)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("sweep_name", name)
    study.set_user_attr("objectives", ["tokens_per_s"])
    study.set_user_attr("searched", list(searched))
    study.set_user_attr("fixed_settings", held)
    study.set_user_attr("base_overrides", [f"{k}={v}" for k, v in (fixed or {}).items()])
    for number, (values, tps) in enumerate(measured.items()):
        params = dict(zip(searched, values))
        config = RunConfig.from_dict(base).to_dict()
        for key, value in params.items():
            _set(config, key, value)
        config["out"] = f"/trials/{name}/{number}/result.json"  # differs per trial, as in a sweep
        result = {
            "tokens_per_s": tps,
            "tokens_per_s_ci": [tps * (1 - spread), tps * (1 + spread)],
            "peak_mem_bytes": 2**20 * (number + 1),
            "config": config,
        }
        add(study, params, result=result)
    return study


def add(study: optuna.Study, params: dict[str, Any], **attrs: Any) -> None:
    """One trial: COMPLETE with ``result`` (its tokens/s as the value), FAIL without."""
    result = attrs.pop("result", None)
    if result is not None:
        attrs[RESULT_ATTR] = result
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE if result else TrialState.FAIL,
            values=[result["tokens_per_s"]] if result else None,
            params=params,
            distributions={k: _distribution(v) for k, v in params.items()},
            user_attrs=attrs,
        )
    )


def _distribution(value: Any) -> BaseDistribution:
    if isinstance(value, int):
        return IntDistribution(1, 1024)
    return CategoricalDistribution(list(PRECISIONS))
