"""Search space: the YAML ``space`` section -> Optuna distributions, checked before any launch.

A space mirrors the config's nesting. Each leaf is a list of choices (categorical) or a range
``{low, high, step?, log?}`` (int when low and high are ints, float otherwise)::

    parallel: {dp: [1, 2]}
    train: {micro_batch: [1, 2, 4], lr: {low: 1.0e-4, high: 1.0e-2, log: true}}
"""

from __future__ import annotations

import copy
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

from engine.config import PP_SCHEDULES, ConfigError, RunConfig
from engine.validate import resolve, validate_values
from tuner.config import RUN_SECTIONS, replace_keys, run_keys

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


def fixed_by_command_line(
    space: dict[str, Any], overrides: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """``space`` without the keys the user set on the command line, and those settings.

    A plain ``key=value`` override of a run section states the value the user wants: searching
    that key anyway would silently run other values, so the user's value wins and the key is
    not searched in this sweep. Returns (the remaining space, ["key=value", ...])."""
    remaining = copy.deepcopy(space)
    fixed = []
    for override in overrides:
        key, sep, value = override.removeprefix("++").partition("=")
        if not sep or key.startswith(("+", "~")) or key.split(".")[0] not in RUN_SECTIONS:
            continue
        if _pop_leaf(remaining, key.split(".")):
            fixed.append(f"{key}={value}")
    return remaining, fixed


def _pop_leaf(node: dict[str, Any], path: list[str]) -> bool:
    """Remove the space leaf at ``path`` (and sections it leaves empty); True if it was there."""
    head, *rest = path
    child = node.get(head)
    if not rest:
        if head not in node or (isinstance(child, dict) and not set(child) & _RANGE_KEYS):
            return False
        del node[head]
        return True
    if not isinstance(child, dict) or set(child) & _RANGE_KEYS or not _pop_leaf(child, rest):
        return False
    if not child:
        del node[head]
    return True


def _normalised(base: RunConfig, params: dict[str, Any]) -> dict[str, Any] | None:
    """The run ``params`` launch, with knobs that have no effect in its layout normalised (e.g.
    the pipeline schedule when pp = 1); None when the layout cannot be resolved."""
    try:
        cfg = resolve(replace_keys(base, params))
    except (ConfigError, KeyError, TypeError):
        return None
    data = cfg.to_dict()
    p = data["parallel"]
    p["world_size"] = 0  # resolved into dp
    # a schedule does nothing without a pipeline; virtual stages are not normalised: more than
    # one where the schedule cannot loop is refused (pruned), unlike its feasible twin
    if p["pp"] == 1:
        p["pp_schedule"] = ""
    data["out"], data["debug"]["dump_params"] = "", ""
    data.pop("progress")  # where a launch reports, not what it runs (keys of older studies)
    return data


def _get(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def layout_key(base: RunConfig, params: dict[str, Any]) -> str:
    """What a trial actually runs, normalised, so that two parameter sets that launch the same
    run are recognised as one configuration."""
    data = _normalised(base, params)
    if data is None:
        return json.dumps({"params": params}, sort_keys=True, default=str)
    return json.dumps(data, sort_keys=True, default=str)


def effective_params(base: RunConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The settings that describe a trial's run: the searched ones that take effect in its
    layout, and dp when it is derived from the world size (``parallel.dp=0``). Unresolvable
    layouts (pruned later with their reason) keep every parameter."""
    data = _normalised(base, params)
    if data is None:
        return dict(params)
    shown = {k: v for k, v in params.items() if _get(data, k) == v or k == "parallel.world_size"}
    p = data["parallel"]
    loops = p["pp"] > 1 and PP_SCHEDULES.get(p["pp_schedule"], "single") != "single"
    if not loops and shown.get("parallel.pp_virtual_stages") == 1:
        del shown["parallel.pp_virtual_stages"]  # one stage per rank: states nothing
    if params.get("parallel.dp", base.parallel.dp) == 0:
        # the derived degree goes right after the searched parallel ones
        items = [(k, v) for k, v in shown.items() if k != "parallel.dp"]
        at = sum(k.startswith("parallel.") for k, _ in items)
        items.insert(at, ("parallel.dp", data["parallel"]["dp"]))
        shown = dict(items)
    return shown


def user_settings(overrides: list[str]) -> list[str]:
    """The run settings the user typed (``key=value`` of a run section), as typed."""
    out = []
    for override in overrides:
        key, sep, _ = override.removeprefix("++").partition("=")
        if sep and not key.startswith(("+", "~")) and key.split(".")[0] in RUN_SECTIONS:
            out.append(override.removeprefix("++"))
    return out
