"""Search space: the YAML ``space`` section -> Optuna distributions, checked before any launch.

A space mirrors the config's nesting. Each leaf is a list of choices (categorical) or a range
``{low, high, step?, log?}`` (int when low and high are ints, float otherwise)::

    parallel: {dp: [1, 2]}
    train: {micro_batch: [1, 2, 4], lr: {low: 1.0e-4, high: 1.0e-2, log: true}}
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from engine.config import ConfigError, RunConfig
from engine.validate import validate_values
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
        """Every configuration of an all-categorical space (for feasibility checks)."""
        keys = list(self.distributions)
        choices = [self.distributions[k].choices for k in keys]  # type: ignore[attr-defined]
        return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]


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


def params_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) or isinstance(y, float):
            if not math.isclose(float(x), float(y), rel_tol=1e-12):
                return False
        elif x != y:
            return False
    return True
