"""Before a layout is launched: can it run here — its settings valid together, its ranks
available, its predicted memory within what this machine gives each rank?

Memory: the analytic peak of the highest rank (engine/metrics/memory_model.py, tensors only)
plus ``launcher.mem_reserve_gib`` per rank for what it does not count (CPU: the torch runtime
of each rank's process; GPU: the CUDA context and allocator slack), against the capacity:
on GPU the device's memory, on CPU ``launcher.mem_limit_gib`` (default: this machine's
memory) shared by the ranks. A layout predicted not to fit is pruned with both figures and
never launched. One that was predicted to fit and ran out of memory anyway widens the margin
(``MARGIN_ATTR``, stored with the study) by which predictions are multiplied for the rest of
the sweep.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass

from engine.config import ConfigError, RunConfig
from engine.metrics.memory_model import predict_all
from engine.units import GIB
from engine.validate import validate

MARGIN_ATTR = "mem_margin"  # study attribute: multiplier on memory predictions (>= 1)
MARGIN_STEP = 1.25  # how much one unpredicted out-of-memory widens it


class Infeasible(ConfigError):
    """A layout that cannot run here; ``reason`` is its failure class (infeasible | memory)."""

    def __init__(self, message: str, reason: str = "infeasible") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Capacity:
    bytes_per_rank: float
    what: str  # where the figure comes from, for the pruned trial's reason


def machine_memory_bytes() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def uses_cuda(cfg: RunConfig) -> bool:
    if cfg.device == "cpu":
        return False
    import torch

    return cfg.device == "cuda" or torch.cuda.is_available()


def capacity(cfg: RunConfig, *, mem_limit_gib: float) -> Capacity:
    if uses_cuda(cfg):
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        return Capacity(total, f"{torch.cuda.get_device_name(0)}: {total / GIB:.1f} GiB")
    ranks = cfg.parallel.n_ranks
    total = mem_limit_gib * GIB if mem_limit_gib else machine_memory_bytes()
    source = f"launcher.mem_limit_gib={mem_limit_gib:g}" if mem_limit_gib else "this machine's"
    return Capacity(total / ranks, f"{source} {total / GIB:.1f} GiB shared by {ranks} ranks")


def predicted_need(cfg: RunConfig, *, reserve_gib: float, margin: float = 1.0) -> float:
    """Bytes the busiest rank needs: its predicted peak (times ``margin``) and the reserve."""
    device = "cuda" if uses_cuda(cfg) else "cpu"
    peak = max(p.total for p in predict_all(cfg, device))
    return margin * peak + reserve_gib * GIB


def check_memory(
    cfg: RunConfig, *, mem_limit_gib: float, reserve_gib: float, margin: float
) -> None:
    if not cfg.model.shape_known:  # a user's module: no memory model to prune by
        return
    need = predicted_need(cfg, reserve_gib=reserve_gib, margin=margin)
    cap = capacity(cfg, mem_limit_gib=mem_limit_gib)
    if need > cap.bytes_per_rank:
        scaled = f" (x{margin:.2f} margin after an out-of-memory)" if margin > 1 else ""
        raise Infeasible(
            f"predicted {need / GIB:.2f} GiB per rank{scaled}, with launcher.mem_reserve_gib="
            f"{reserve_gib:g}, > capacity {cap.bytes_per_rank / GIB:.2f} GiB ({cap.what})",
            "memory",
        )


def runnable(cfg: RunConfig, launcher, *, margin: float = 1.0) -> RunConfig:
    """The validated run, or Infeasible with the reason it cannot run on this machine."""
    from tuner.launch import check_machine

    try:
        cfg = validate(cfg)
        check_machine(cfg, launcher)
    except ConfigError as err:
        raise Infeasible(str(err)) from None
    limit, reserve = launcher.mem_limit_gib, launcher.mem_reserve_gib
    check_memory(cfg, mem_limit_gib=limit, reserve_gib=reserve, margin=margin)
    return cfg


def check_space_runs(candidates: list[RunConfig], launcher, fixed: list[str]) -> None:
    """Stop before launching anything when no candidate of a finite space can run."""
    reasons: collections.Counter[str] = collections.Counter()
    example: dict[str, str] = {}
    for cfg in candidates:
        try:
            runnable(cfg, launcher)
            return
        except Infeasible as err:
            # grouped by condition: memory verdicts differ only in their numbers
            why = "memory" if err.reason == "memory" else str(err).split("; valid")[0][:160]
            reasons[why] += 1
            example.setdefault(why, str(err))
    if not reasons:
        return
    grouped = "; ".join(
        f"{n}x {'memory, e.g. ' + example[why] if why == 'memory' else why}"
        for why, n in reasons.most_common(4)
    )
    blame = f"the settings fixed for the sweep ({' '.join(fixed)})" if fixed else "these settings"
    raise ConfigError(
        f"no layout of the space can run with {blame}: all {sum(reasons.values())} "
        f"distinct configurations are infeasible: {grouped}."
    )


def after_oom(study, cfg: RunConfig, launcher, margin: float) -> str:
    """An out-of-memory the prediction did not foresee: every later prediction of the sweep
    is scaled up (the model is optimistic for this run); returns the note that goes beside
    the failure, with the prediction that was wrong."""
    need = predicted_need(cfg, reserve_gib=launcher.mem_reserve_gib, margin=margin)
    wider = margin * MARGIN_STEP
    study.set_user_attr(MARGIN_ATTR, wider)
    return (
        f"[predicted {need / GIB:.2f} GiB per rank, which fit; later predictions of this "
        f"sweep are multiplied by {wider:.2f}]"
    )
