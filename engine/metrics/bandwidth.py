"""Algorithm and bus bandwidth per collective kind, in nccl-tests' conventions.

nccl-tests (doc/PERFORMANCE.md): algbw = size / time, with size the whole array (for an
all-gather, n times one rank's shard); busbw = algbw x a factor that makes the figure comparable
with the hardware's link bandwidth: 2(n-1)/n for all-reduce, (n-1)/n for all-gather,
reduce-scatter and all-to-all, 1 for broadcast, reduce and point-to-point.

The group size n is known only when a single mesh dimension communicates (dp, tp or pp alone);
with several, per-kind events cannot be told apart by group and the bandwidths are left empty
rather than guessed.
"""

from __future__ import annotations

from typing import Any

from engine.config import RunConfig


def _factor(kind: str, n: int) -> float | None:
    if kind == "all_reduce":
        return 2 * (n - 1) / n
    if kind in ("all_gather", "reduce_scatter", "all_to_all", "alltoall"):
        return (n - 1) / n
    if kind in ("broadcast", "reduce", "send", "recv"):
        return 1.0
    return None


def group_size(cfg: RunConfig) -> int | None:
    """The size of the only communicating mesh dimension, or None when several communicate."""
    sizes = [n for n in (cfg.parallel.dp, cfg.parallel.tp, cfg.parallel.pp) if n > 1]
    return sizes[0] if len(sizes) == 1 else None


def add_bandwidth(kinds: dict[str, dict[str, Any]], group: int | None) -> None:
    """Add ``algbw_gbps`` and ``busbw_gbps`` (GB/s, 1e9 bytes) to each kind's figures."""
    for kind, stats in kinds.items():
        algbw = busbw = None
        if group is not None and stats["time_s"] > 0:
            size = stats["bytes"] * (group if kind == "all_gather" else 1)
            algbw = size / stats["time_s"] / 1e9
            factor = _factor(kind, group)
            busbw = algbw * factor if factor is not None else None
        stats["algbw_gbps"], stats["busbw_gbps"] = algbw, busbw


def notes(cfg: RunConfig, backend: str) -> list[str]:
    """Where these CPU figures differ from what NCCL would do."""
    out = []
    if backend == "gloo" and (cfg.parallel.zero >= 2 or cfg.parallel.sp or cfg.parallel.tp > 1):
        out.append(
            "gloo carries out reduce-scatter as an all-reduce of the full buffer: FSDP's "
            "gradient reduction and sequence parallelism's reduce-scatters appear as all_reduce "
            "and move about twice the bytes NCCL's reduce-scatter would."
        )
    return out
