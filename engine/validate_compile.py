"""What `train.compile` cannot be combined with, checked before anything runs."""

from __future__ import annotations

from engine.config import ConfigError, RunConfig


def check_compile(cfg: RunConfig) -> None:
    from engine.validate import SPLIT_BACKWARD  # engine.validate imports this module

    t = cfg.train
    if t.compile != "none" and t.warmup_steps < 1:
        raise ConfigError(
            f"train.compile={t.compile} compiles in the first step, which must not be timed, "
            "but train.warmup_steps=0; set train.warmup_steps >= 1 or train.compile=none."
        )
    p = cfg.parallel
    if t.compile != "none" and p.pp > 1 and p.pp_schedule in SPLIT_BACKWARD:
        # measured: the schedule fails at its first input-gradient pass of a compiled block
        raise ConfigError(
            f"train.compile={t.compile} runs a block's backward as one compiled graph, but "
            f"parallel.pp_schedule={p.pp_schedule} splits it into an input-gradient and a "
            "weight-gradient pass; valid with compile: gpipe, 1f1b, interleaved_1f1b or "
            "looped_bfs, or set train.compile=none."
        )
