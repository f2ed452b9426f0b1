"""Search space: the YAML ``space`` section -> Optuna distributions, checked before any launch.

A space mirrors the config's nesting. Each leaf is a list of choices (categorical) or a range
``{low, high, step?, log?}`` (int when low and high are ints, float otherwise)::

    parallel: {dp: [1, 2]}
    train: {micro_batch: [1, 2, 4], lr: {low: 1.0e-4, high: 1.0e-2, log: true}}
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from engine.config import ConfigError, RunConfig
from engine.parallel.pipeline import SCHEDULES
from engine.validate import resolve, validate_values
from tuner.config import replace_keys, run_keys

_RANGE_KEYS = {"low", "high", "step", "log"}


@dataclass(frozen=True)
class SearchSpace:
    distributions: dict[str, BaseDistribution]  # dotted config key -> distribution

    @property
    def size(self) -> int | None:
        """Number of distinct configurations, or None if the space is continuous."""
        total = 1
        for d in self.distributions.values():
            if isinstance(d, CategoricalDistribution):
                total *= len(d.choices)
            elif isinstance(d, IntDistribution) and not d.log:
                total *= (d.high - d.low) // d.step + 1
            else:
                return None
        return total

    def grid(self) -> list[dict[str, Any]]:
        """Every parameter set of a finite space."""
        keys = list(self.distributions)
        values = []
        for k in keys:
            d = self.distributions[k]
            if isinstance(d, CategoricalDistribution):
                values.append(list(d.choices))
            else:  # a finite (non-log) integer range; `size` is None for anything else
                values.append(list(range(d.low, d.high + 1, d.step)))  # type: ignore[attr-defined]
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]

    def distinct_layouts(self, base: RunConfig, *, limit: int = 50_000) -> set[str] | None:
        """The distinct runs a finite space can launch (None when infinite or too large)."""
        if self.size is None or self.size > limit:
            return None
        return {layout_key(base, params) for params in self.grid()}


def _leaves(node: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, value in node.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and not (set(value) & _RANGE_KEYS):
            out.extend(_leaves(value, key + "."))
        else:
            out.append((key, value))
    return out


def _distribution(key: str, spec: Any, expected: type) -> BaseDistribution:
    where = f"space.{key}"
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"`{where}` must list at least one choice, but got {spec}.")
        if len(set(map(repr, spec))) != len(spec):
            raise ConfigError(f"`{where}` lists a choice twice: {spec}.")
        for value in spec:
            ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise ConfigError(
                    f"`{where}` choices must be of type {expected.__name__} like `{key}`, but got "
                    f"{value!r} in {spec}."
                )
        return CategoricalDistribution(spec)
    if isinstance(spec, dict):
        unknown = set(spec) - _RANGE_KEYS
        if unknown or not {"low", "high"} <= set(spec):
            raise ConfigError(
                f"`{where}` must be a list of choices or a range with keys low, high and optional "
                f"step, log; but got {spec}."
            )
        low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
        if not low <= high or (log and low <= 0):
            raise ConfigError(
                f"`{where}` needs low <= high (and low > 0 with log), but got {spec}."
            )
        if expected is int:
            if not (isinstance(low, int) and isinstance(high, int)):
                raise ConfigError(
                    f"`{where}` bounds must be integers like `{key}`, but got {spec}."
                )
            return IntDistribution(low, high, log=log, step=int(spec.get("step", 1)))
        if expected is float:
            return FloatDistribution(float(low), float(high), log=log, step=spec.get("step"))
        raise ConfigError(f"`{where}` is a {expected.__name__} setting: give a list of choices.")
    raise ConfigError(
        f"`{where}` must be a list of choices or a {{low, high}} range, got {spec!r}."
    )


def build(space: dict[str, Any], base: RunConfig) -> SearchSpace:
    """Check every searched key and value; ``base`` supplies the settings that are not searched."""
    valid = run_keys()
    dists: dict[str, BaseDistribution] = {}
    for key, spec in _leaves(space):
        if key not in valid:
            close = [k for k in valid if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" Did you mean {close}?" if close else ""
            raise ConfigError(
                f"`space.{key}` names no config key.{hint} Searchable keys: {sorted(valid)}."
            )
        dists[key] = _distribution(key, spec, valid[key])
        # each value must be valid on its own; combinations are checked per trial (pruned)
        values = (
            dists[key].choices
            if isinstance(dists[key], CategoricalDistribution)
            else (
                dists[key].low,
                dists[key].high,  # type: ignore[attr-defined]
            )
        )
        for value in values:
            try:
                validate_values(replace_keys(base, {key: value}))
            except ConfigError as err:
                raise ConfigError(f"`space.{key}` choice {value!r} is invalid: {err}") from None
    if not dists:
        raise ConfigError(
            "`space` is empty: name at least one key to search, e.g. space.parallel.dp=[1,2]."
        )
    return SearchSpace(dists)


def layout_key(base: RunConfig, params: dict[str, Any]) -> str:
    """What a trial actually runs, with knobs that have no effect in its layout normalised
    (e.g. the pipeline schedule when pp = 1), so that two parameter sets that launch the same
    run are recognised as one configuration."""
    try:
        cfg = resolve(replace_keys(base, params))
    except (ConfigError, KeyError, TypeError):
        return json.dumps({"params": params}, sort_keys=True, default=str)
    data = cfg.to_dict()
    p = data["parallel"]
    p["world_size"] = 0  # resolved into dp
    if p["pp"] == 1:
        p["pp_schedule"], p["pp_virtual_stages"] = "", 1
    elif p["pp_schedule"] in SCHEDULES and SCHEDULES[p["pp_schedule"]].placement == "single":
        p["pp_virtual_stages"] = 1
    data["out"], data["debug"]["dump_params"] = "", ""
    return json.dumps(data, sort_keys=True, default=str)
