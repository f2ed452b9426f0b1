"""Every parallel layout of one model on one cluster: the candidates the planner ranks.

A layout fixes the degrees (dp × tp × pp = the cluster's devices), the ZeRO stage, sequence
parallelism, the pipeline schedule and its stages per rank, the micro-batch size, activation
checkpointing and precision; the model, global batch and everything else come from the base
configuration.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

from engine.config import PP_SCHEDULES, RunConfig
from tuner.schema import PlanOptions


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def _schedules(space: PlanOptions, pp: int) -> Iterator[tuple[str, int]]:
    if pp == 1:
        yield "1f1b", 1
        return
    for name in space.pp_schedule:
        placement = PP_SCHEDULES[name]
        if placement == "loop":
            yield from ((name, v) for v in space.pp_virtual_stages)
        else:
            yield name, 1


def layouts(base: RunConfig, world_size: int, space: PlanOptions) -> Iterator[RunConfig]:
    """Every combination, valid or not (the planner says why one cannot run)."""
    # the training settings do not depend on the degrees: built once, shared by the layouts
    # (as each ParallelConfig is by its micro-batch, checkpointing and precision variants)
    trains = [
        dataclasses.replace(base.train, micro_batch=mb, activation_checkpointing=ac, precision=prec)
        for mb, ac, prec in itertools.product(
            space.micro_batch, space.activation_checkpointing, space.precision
        )
    ]
    for tp in _divisors(world_size):
        for pp in _divisors(world_size // tp):
            dp = world_size // (tp * pp)
            zeros = [z for z in space.zero if dp > 1 or z == 0]
            sps = [s for s in space.sp if tp > 1 or not s]
            for zero, sp, (sched, v) in itertools.product(zeros, sps, _schedules(space, pp)):
                parallel = dataclasses.replace(
                    base.parallel,
                    world_size=world_size,
                    dp=dp,
                    tp=tp,
                    pp=pp,
                    zero=zero,
                    sp=sp,
                    pp_schedule=sched,
                    pp_virtual_stages=v,
                )
                for train in trains:
                    yield dataclasses.replace(base, parallel=parallel, train=train)
