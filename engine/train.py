"""The training loop of one rank: warmup steps, then measured steps, then per-rank records.

The step itself is ``engine.step.TrainStep`` (shared with ``engine.Engine``); what surrounds
it (measurements, checkpoints, injected faults) is ``engine.hooks``.
"""

from __future__ import annotations

from functools import partial

from engine.config import RunConfig
from engine.data import training_tokens
from engine.hooks import Checkpointing, Faults, Measurement, dump_params, timed_step
from engine.parallelize import Batch
from engine.recipe import Recipe
from engine.record import RankRecord as RankRecord  # re-exported: results and tests read it here
from engine.record import profile_window as profile_window
from engine.runtime import DistContext
from engine.sources import recipe_for
from engine.step import MAX_CONSECUTIVE_SKIPS as MAX_CONSECUTIVE_SKIPS
from engine.step import Diverged as Diverged
from engine.step import TrainStep
from engine.timed_stop import TimedStop


def train(cfg: RunConfig, ctx: DistContext, recipe: Recipe | None = None) -> RankRecord:
    """Train ``recipe``'s model (default: the run's ``model.source``) on the run's tokens."""
    t, device = cfg.train, ctx.device
    recipe = recipe or recipe_for(cfg)
    trainer = TrainStep.build(cfg, ctx, recipe)
    record = RankRecord(rank=ctx.rank, has_loss=trainer.stepper.has_loss)
    checkpoints = Checkpointing(cfg, trainer, record, rank=ctx.rank)  # may resume: first_step
    faults = Faults(cfg.debug, rank=ctx.rank)
    data = training_tokens(cfg)
    rank, dp = trainer.mesh.dp_rank, trainer.mesh.dp  # data-parallel

    def load(step: int) -> Batch:
        micro = data.micro_batches(step, dp_rank=rank, dp=dp, micro_batch=t.micro_batch)
        return [(x.to(device), y.to(device)) for x, y in micro]

    stop = TimedStop(cfg, ctx, first_step=record.first_step)
    with Measurement(cfg, ctx, trainer, record, stop) as measure:
        for step in range(record.first_step, t.steps):
            loss, update = timed_step(measure, trainer, step, partial(load, step), faults)
            if measure.note(step, loss, update):
                break  # diverged
            checkpoints.after(step, measure)
            measure.after(step)
            if measure.ended(step):
                break  # measured enough (measure.target_ci)

    if cfg.debug.dump_params:
        dump_params(cfg.debug.dump_params, trainer, ctx)
    return record
