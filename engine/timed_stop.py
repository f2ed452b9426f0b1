"""Ends the timed steps once they have measured enough (``measure.target_ci``).

After each timed step every rank contributes its step time; the slowest (the step's time, as
the result counts it) enters the tokens/s samples, and the run stops timing once their median's
95% interval is as narrow as asked (engine.metrics.stats). Every rank sees the same samples,
so every rank stops on the same step without a second collective. The all-reduce runs after
the stopwatch and before the profiled window, so it is in no timed step and in no
communication figure.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from engine.config import RunConfig
from engine.metrics.stats import precise_enough
from engine.runtime import DistContext


class TimedStop:
    """``done(step, seconds)`` after each step: whether the timed steps have measured enough."""

    def __init__(self, cfg: RunConfig, ctx: DistContext, *, first_step: int) -> None:
        self.target, self.min_steps = cfg.measure.target_ci, cfg.measure.min_timed_steps
        self.timed_from = first_step + cfg.train.warmup_steps
        self.tokens_per_step = cfg.train.global_batch * cfg.model.seq_len
        self.device = ctx.device
        self.shared = ctx.initialized and ctx.world_size > 1
        self.samples: list[float] = []  # tokens/s of each timed step, slowest rank

    @property
    def enabled(self) -> bool:
        return self.target > 0

    def _slowest(self, seconds: float) -> float:
        if not self.shared:
            return seconds
        t = torch.tensor([seconds], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def done(self, step: int, seconds: float) -> bool:
        if not self.enabled or step < self.timed_from:
            return False
        self.samples.append(self.tokens_per_step / self._slowest(seconds))
        return precise_enough(self.samples, target=self.target, min_n=self.min_steps)
