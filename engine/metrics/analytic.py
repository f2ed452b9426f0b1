"""Analytic communication volume per step and per rank, to check the measured bytes against.

The formulas live in ``metrics.volumes`` (every collective of every layout); this sums them per
collective kind and averages over the pipeline ranks, as the run's measured ``comm`` figures
average over ranks. ``backend``: gloo runs a reduce-scatter as an all-reduce of the full
buffer, and the figures follow what ran.
"""

from __future__ import annotations

from engine.config import RunConfig
from engine.metrics.volumes import collectives


def expected_comm_bytes(cfg: RunConfig, *, backend: str = "gloo") -> dict[str, float]:
    """Bytes per step per rank by collective kind, averaged over pipeline ranks."""
    pp = cfg.parallel.pp
    out: dict[str, float] = {}
    for pp_rank in range(pp):
        for c in collectives(cfg, pp_rank, backend=backend):
            out[c.kind] = out.get(c.kind, 0.0) + c.bytes / pp
    return out
