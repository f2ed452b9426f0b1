"""``torch.compile`` of a model part, applied from outside like every other parallelism.

``blocks`` compiles each transformer block on its own, as torchtitan does: after tensor
parallelism and activation checkpointing have wrapped the block, before FSDP2 or DDP wrap it,
so the collectives of data parallelism stay between the compiled regions and every block of
the same shape reuses one compiled graph. ``model`` compiles the whole part (one stage under
pipeline parallelism) at the same point. ``nn.Module.compile`` compiles in place, so parameter
names, the FSDP2 units and checkpoints stay as they are in eager mode.

Compilation is lazy: it happens in the first forward and backward (the warmup steps). Its
wall time is read from dynamo's own cumulative counters, so it is reported apart from the
step time (``compile_s``).
"""

from __future__ import annotations

import sys

from torch import nn

from engine.config import ConfigError
from engine.recipe import Recipe


def apply_compile(part: nn.Module, recipe: Recipe, mode: str) -> None:
    """Compile ``part`` in place: each of ``recipe``'s blocks in it ("blocks"), the whole part
    ("model"), or nothing ("none")."""
    if mode == "blocks":
        blocks = recipe.blocks(part)
        if not blocks:
            raise ConfigError(
                "train.compile=blocks compiles each block of the model, but this model part "
                "has none (a user's module names them with `shard_units`); pass shard_units, "
                "or set train.compile=model."
            )
        for parent, name in blocks:
            # fullgraph: a block that breaks the graph would silently run partly eager
            getattr(parent, name).compile(fullgraph=True)
    elif mode == "model":
        part.compile()


def compile_seconds() -> float:
    """Wall seconds this process has spent compiling so far (forward and backward graphs).
    Dynamo is not imported for the question: until something has imported it, nothing has
    been compiled (importing it costs half a second)."""
    if "torch._dynamo" not in sys.modules:
        return 0.0
    from torch._dynamo.utils import calculate_time_spent

    return calculate_time_spent().get("total_wall_time", 0.0)
