"""One result from independent launches of the same configuration (``measure.repeats``).

Every figure of a run's result is merged by the rule engine/result_schema.py declares with
it, so no figure silently stays that of the first launch: throughput statistics are recomputed
over the timed steps of all launches, memory is the maximum, time and volume per step are
means, utilisations are recomputed from the merged median, and the per-step lists of each
launch are kept side by side.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from engine.config import RunConfig
from engine.metrics.bandwidth import add_bandwidth, group_size
from engine.metrics.stats import median_ci
from engine.metrics.timing import Spread
from engine.result_schema import FIELDS, conform

Result = dict[str, Any]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _first(values: list[Any]) -> Any:
    return values[0]


def _same(key: str) -> Callable[[list[Any]], Any]:
    """Facts of the configuration: equal in every launch, or the launches are not repeats."""

    def rule(values: list[Any]) -> Any:
        if any(v != values[0] for v in values[1:]):
            raise ValueError(
                f"repeats differ in `{key}` ({values}); they are not one configuration."
            )
        return values[0]

    return rule


# per-launch paths, not settings of the run: each launch writes its own result and progress
_PER_LAUNCH = ("out", "progress")


def _config(values: list[Any]) -> Any:
    """The configuration all launches ran; each wrote its own files (``_PER_LAUNCH``)."""
    plain = [{k: v for k, v in c.items() if k not in _PER_LAUNCH} for c in values]
    return {**_same("config")(plain), **dict.fromkeys(_PER_LAUNCH, "")}


def _known(values: list[Any]) -> list[Any]:
    return [v for v in values if v is not None]


def _max(values: list[Any]) -> Any:
    known = _known(values)
    return max(known) if len(known) == len(values) else None


def _mean_or_none(values: list[Any]) -> Any:
    """The mean of a figure every launch measured; None (not measured) when one did not."""
    known = _known(values)
    return _mean(known) if known and len(known) == len(values) else None


def _sum(values: list[Any]) -> Any:
    return sum(values)


def _per_launch(values: list[Any]) -> list[Any]:
    return list(values)


def _elementwise(reduce: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    def rule(values: list[Any]) -> Any:
        if any(v is None or len(v) != len(values[0]) for v in values):
            return None
        return [reduce(list(col)) for col in zip(*values, strict=True)]

    return rule


def _dict_mean(values: list[Any]) -> Any:
    """Mean per key of dicts of numbers (e.g. the breakdown's parts); None if one is missing."""
    if any(v is None for v in values):
        return None
    keys = sorted({k for v in values for k in v})
    return {k: _mean_or_none([v.get(k) for v in values]) for k in keys}


def _comm_kinds(values: list[Any]) -> Any:
    """Per collective kind, the mean of each figure over launches (a kind missing in a launch
    counts as zero there); the bandwidths are derived again from the merged means."""
    if any(v is None for v in values):
        return None
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted({k for v in values for k in v}):
        rows = [v.get(kind, {}) for v in values]
        fields = sorted({f for r in rows for f in r} - {"algbw_gbps", "busbw_gbps"})
        out[kind] = {f: _mean_or_none([r.get(f, 0.0) for r in rows]) for f in fields}
    return out


def _union(values: list[Any]) -> Any:
    return sorted({x for v in values for x in v})


# The functions behind the merge rule each figure declares in engine/result_schema.py.
RULE_FUNCTIONS: dict[str, Callable[[list[Any]], Any]] = {
    "first": _first,
    "max": _max,
    "mean": _mean_or_none,
    "sum": _sum,
    "any": any,
    "union": _union,
    "per_launch": _per_launch,
    "elementwise_max": _elementwise(_max),
    "dict_mean": _dict_mean,
    "elementwise_dict_mean": _elementwise(_dict_mean),
    "comm_kinds": _comm_kinds,
    "config": _config,
}
# "same" needs the figure's name for its message; "recomputed" figures come from merge() itself
assert {f.merge for f in FIELDS} <= {*RULE_FUNCTIONS, "same", "recomputed"}


def merge(results: list[Result]) -> Result:
    """The merged result of ``results`` (launches of one configuration, all successful)."""
    if len(results) == 1:
        return results[0]
    results = [conform(r) for r in results]
    merged: Result = {}
    for field in FIELDS:
        if field.name not in results[0] or field.merge == "recomputed":
            continue
        values = [r[field.name] for r in results]
        rule = _same(field.name) if field.merge == "same" else RULE_FUNCTIONS[field.merge]
        merged[field.name] = rule(values)
    # the per-launch lists are kept as lists of lists; the pooled timed samples drive the stats
    samples = [
        r["tokens_per_step"] / r["step_times_s"][i] for r in results for i in r["timed_steps"]
    ]
    times = [r["step_times_s"][i] for r in results for i in r["timed_steps"]]
    ci, spread = median_ci(samples), Spread.of(samples)
    merged.update(
        {
            "repeats": len(results),
            "tokens_per_s": ci.median,
            "tokens_per_s_min": spread.min,
            "tokens_per_s_max": spread.max,
            "tokens_per_s_ci": [ci.low, ci.high],
            "tokens_per_s_ci_coverage": ci.coverage,
            "tokens_per_s_cv": ci.cv,
            "tokens_per_s_repeats": [r["tokens_per_s"] for r in results],
            "step_time_s": statistics.median(times),
            "step_time_s_min": min(times),
            "step_time_s_max": max(times),
        }
    )
    for key in ("mfu", "hfu"):  # utilisation follows the merged median throughput
        per_token = [
            r[key] / r["tokens_per_s"] if r.get(key) is not None else None for r in results
        ]
        merged[key] = per_token[0] * ci.median if None not in per_token else None
    measured = merged.get("mem_compared_bytes")
    predicted = merged.get("predicted_peak_mem_bytes")
    merged["mem_prediction_error"] = (
        (predicted - measured) / measured if measured and predicted is not None else None
    )
    if merged.get("comm") is not None:
        add_bandwidth(merged["comm"], group_size(RunConfig.from_dict(merged["config"])))
    parts, step = merged.get("breakdown"), merged.get("breakdown_step_s")
    merged["breakdown_sum_error"] = (sum(parts.values()) - step) / step if parts and step else None
    return conform(merged)
