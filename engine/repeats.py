"""One result from independent launches of the same configuration (``measure.repeats``).

Every key of a run's result is merged by a declared rule, so no figure silently stays that of
the first launch: throughput statistics are recomputed over the timed steps of all launches,
memory is the maximum, time and volume per step are means, utilisations are recomputed from
the merged median, and the per-step lists of each launch are kept side by side.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from engine.config import RunConfig
from engine.metrics.bandwidth import add_bandwidth, group_size
from engine.metrics.stats import median_ci
from engine.metrics.timing import Spread

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


def _config(values: list[Any]) -> Any:
    """The configuration all launches ran; each wrote its own result file (``out``)."""
    plain = [{k: v for k, v in c.items() if k != "out"} for c in values]
    return {**_same("config")(plain), "out": ""}


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


# How each key of a run result is merged. Keys recomputed in merge() from the pooled samples
# are marked RECOMPUTED; a key missing here is an error, so a new figure must declare its rule.
RECOMPUTED = object()
RULES: dict[str, Any] = {
    **dict.fromkeys(
        (
            "schema_version",
            "n_params",
            "flops_per_token",
            "world_size",
            "tokens_per_step",
            "device",
            "backend",
            "torch_version",
            "host",
            "first_step",
            "peak_flops_per_device",
            "comm_bytes_analytic",
            "comm_delay_ms",
            "mem_method",
            "predicted_peak_mem_bytes",
            "predicted_peak_mem_bytes_per_rank",
            "mem_breakdown",
            "mem_prediction_compared_to",
            "peak_flops_source",
            "mfu_note",
            "comm_notes",
            "not_measured",
        ),
        "same",
    ),
    # the data and the seed are the same, so every launch computes the same losses
    **dict.fromkeys(("losses", "grad_norms", "final_loss", "loss_scale", "status"), _first),
    **dict.fromkeys(
        (
            "tokens_per_s",
            "tokens_per_s_min",
            "tokens_per_s_max",
            "tokens_per_s_ci",
            "tokens_per_s_ci_coverage",
            "tokens_per_s_cv",
            "repeats",
            "step_time_s",
            "step_time_s_min",
            "step_time_s_max",
            "mfu",
            "hfu",
            "mem_prediction_error",
            "breakdown_sum_error",
        ),
        RECOMPUTED,
    ),
    **dict.fromkeys(
        (
            "peak_mem_bytes",
            "tensor_peak_bytes",
            "peak_reserved_bytes",
            "alloc_retries",
            "rss_bytes",
            "mem_compared_bytes",
            "skipped_steps",
        ),
        _max,
    ),
    **dict.fromkeys(
        ("peak_mem_bytes_per_rank", "tensor_peak_bytes_per_rank", "skipped_steps_per_rank"),
        _elementwise(_max),
    ),
    **dict.fromkeys(
        (
            "data_time_s",
            "comm_exposed_s",
            "comm_count",
            "comm_bytes",
            "comm_time_s",
            "breakdown_step_s",
            "ckpt_save_s",
            "ckpt_load_s",
        ),
        _mean_or_none,
    ),
    "config": _config,
    "breakdown": _dict_mean,
    "comm_calls": _dict_mean,
    "breakdown_per_rank": _elementwise(_dict_mean),
    "comm": _comm_kinds,
    "comm_delay_inline": _sum,
    "comm_unknown_dtypes": _union,
    "timing_includes_profiler": any,
    "mem_includes_profiler": any,
    # per-step lists differ between launches: kept per launch, indexes into them too
    **dict.fromkeys(
        ("step_times_s", "timed_steps", "comm_busy_s_steps", "comm_exposed_s_steps"),
        _per_launch,
    ),
}


def merge(results: list[Result]) -> Result:
    """The merged result of ``results`` (launches of one configuration, all successful)."""
    if len(results) == 1:
        return results[0]
    keys = list(dict.fromkeys(k for r in results for k in r))
    unknown = [k for k in keys if k not in RULES]
    assert not unknown, f"no merge rule for result key(s) {unknown}"
    merged: Result = {}
    for key in keys:
        rule = RULES[key]
        values = [r.get(key) for r in results]
        if rule is RECOMPUTED:
            continue
        merged[key] = _same(key)(values) if rule == "same" else rule(values)
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
    return merged
