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
from engine.metrics.comm import UNATTRIBUTED
from engine.metrics.comm_trace import canonical_kind


def bus_factor(kind: str, n: int) -> float | None:
    kind = canonical_kind(kind)  # FSDP's `_all_gather_base` is an all-gather, and so on
    if kind == "all_reduce":
        return 2 * (n - 1) / n
    if kind in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    if kind in ("broadcast", "reduce", "send", "recv"):
        return 1.0
    return None


def group_size(cfg: RunConfig) -> int | None:
    """The size of the only communicating mesh dimension, or None when several communicate."""
    sizes = [n for n in (cfg.parallel.dp, cfg.parallel.tp, cfg.parallel.pp) if n > 1]
    return sizes[0] if len(sizes) == 1 else None


def add_bandwidth(kinds: dict[str, dict[str, Any]], group: int | None) -> None:
    """Add ``algbw_gbps`` and ``busbw_gbps`` (GB/s, 1e9 bytes) to each kind's figures; none for
    ``unattributed`` kernel time, whose bytes are unknown."""
    for kind, stats in kinds.items():
        algbw = busbw = None
        if group is not None and stats["time_s"] > 0 and kind != UNATTRIBUTED:
            # bytes are one rank's input: for an all-gather its shard, 1/n of the array
            gathers = canonical_kind(kind) == "all_gather"
            size = stats["bytes"] * (group if gathers else 1)
            algbw = size / stats["time_s"] / 1e9
            factor = bus_factor(kind, group)
            busbw = algbw * factor if factor is not None else None
        stats["algbw_gbps"], stats["busbw_gbps"] = algbw, busbw


def notes(cfg: RunConfig, backend: str, kinds: dict[str, Any] | None = None) -> list[str]:
    """Where these figures differ from what they seem: gloo's reduce-scatter, and NCCL kernel
    time that could not be tied to its collective (``kinds``: the run's per-kind figures)."""
    out = []
    if backend == "gloo" and (cfg.parallel.zero >= 2 or cfg.parallel.sp or cfg.parallel.tp > 1):
        out.append(
            "gloo carries out reduce-scatter as an all-reduce of the full buffer: FSDP's "
            "gradient reduction and sequence parallelism's reduce-scatters appear as all_reduce "
            "and move about twice the bytes NCCL's reduce-scatter would."
        )
    if backend == "nccl" and UNATTRIBUTED in (kinds or {}):
        out.append(
            "each NCCL kernel's time goes to the collective that launched it (the profiler's "
            "link to the `nccl:*` call) or that its name states; a kernel with neither (NCCL's "
            f"`Generic` kernel, or a SendRecv kernel, without the link) is counted under "
            f"`{UNATTRIBUTED}`: its time is in comm_time_s, its bandwidth left empty."
        )
    return out
