"""Which measured part of a step each feature's time falls in, so that calibration can fit
each group of coefficients to its own part of the step and not only to the total.

Every trial's result carries the step's breakdown from the profiler's timeline
(``engine.metrics.timeline``): forward and backward compute, exposed collectives, pipeline
bubble (waiting on a neighbouring stage), optimizer, data. Fitted to the total alone, a
coefficient may soak up another part's time (an optimizer coefficient that stands in for
compute predicts well where optimizer and compute grow together, and badly elsewhere); each
part's own measurement separates them.

A feature counted per micro-batch (``features.step_span``) fills the rank's busy micro-batch
times, m of the step's span, with compute (or exposed tensor-parallel collectives); the rest
of the span is the bubble, spent waiting, so that share of its time is bubble time.
"""

from __future__ import annotations

from typing import Any

from engine.config import RunConfig
from engine.metrics.volumes import n_micro
from tuner.perf.cluster import Cluster
from tuner.perf.features import FEATURES, features, step_span

# the measured parts a fit compares with: engine.metrics.timeline's PARTS, forward and
# backward together (recomputation and the split weight-gradient pass move work between them)
PARTS = ("compute", "comm_exposed", "bubble", "optimizer", "other")

PART_OF: dict[str, str] = {
    "matmul": "compute",
    "matmul_small": "compute",
    "matmul_lowp": "compute",
    "elementwise": "compute",
    "calls": "compute",
    "tp_calls": "compute",
    "comm_tp": "comm_exposed",
    "comm_pp": "bubble",
    "pp_hops": "bubble",
    "dp_calls": "compute",
    "comm_dp0": "comm_exposed",
    "comm_dp1": "comm_exposed",
    "comm_dp2": "comm_exposed",
    "comm_dp3": "comm_exposed",
    "optimizer": "optimizer",
    "opt_tensors": "optimizer",
    "opt_dtensors": "optimizer",
    "step": "other",
}
assert set(PART_OF) == set(FEATURES) and set(PART_OF.values()) <= set(PARTS)

# the features that scale with the step's span (per micro-batch work of the busiest rank)
PER_MICRO = ("matmul", "matmul_small", "matmul_lowp", "elementwise", "calls", "tp_calls")
PER_MICRO += ("comm_tp",)


def split(cfg: RunConfig, cluster: Cluster) -> dict[str, dict[str, float]]:
    """Per part, each feature's share of it (part -> feature -> value): the features
    (``features.features``) distributed over the parts; the shares of a feature sum to it."""
    x = features(cfg, cluster)
    busy = n_micro(cfg) / step_span(cfg, cluster)
    out = {part: dict.fromkeys(FEATURES, 0.0) for part in PARTS}
    for k, v in x.items():
        if k in PER_MICRO:
            out[PART_OF[k]][k] += busy * v
            out["bubble"][k] += (1 - busy) * v
        else:
            out[PART_OF[k]][k] += v
    return out


def measured(result: dict[str, Any]) -> dict[str, float] | None:
    """A trial's measured parts (PARTS, seconds per step), or None where it has no breakdown.

    The breakdown of the rank that computes longest, as the features describe the slowest
    pipeline rank; scaled so that the parts add up to the trial's step time (the profiled
    steps, which the breakdown comes from, run a little slower than the timed ones)."""
    ranks = result.get("breakdown_per_rank") or []
    step = result.get("step_time_s")
    if not ranks or not step:
        return None
    b = max(ranks, key=lambda r: r["forward"] + r["backward"])
    total = sum(b.values())
    if total <= 0:
        return None
    parts = {
        "compute": b["forward"] + b["backward"],
        "comm_exposed": b["comm_exposed"],
        "bubble": b["bubble"],
        "optimizer": b["optimizer"],
        "other": b["data"],
    }
    return {k: v * step / total for k, v in parts.items()}
