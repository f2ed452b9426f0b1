"""The (pp, dp, tp) device mesh and this rank's coordinates in it, as one explicit object.

Ranks are laid out with tp varying fastest, then dp, then pp (Megatron's order): the ranks of a
tensor-parallel group are neighbours, which on a multi-GPU node keeps the chattiest traffic
inside the fastest links.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from engine.config import ParallelConfig
from engine.runtime import DistContext
from engine.stages import coordinates


@dataclass(frozen=True)
class Mesh:
    pp: int
    dp: int
    tp: int
    pp_rank: int
    dp_rank: int
    tp_rank: int
    device_mesh: DeviceMesh | None  # None for a single process

    def sub(self, name: str) -> DeviceMesh | None:
        """The 1-D mesh of dimension ``name`` ("pp", "dp" or "tp"), or None if its size is 1."""
        if self.device_mesh is None or getattr(self, name) == 1:
            return None
        return self.device_mesh[name]

    def group(self, name: str) -> dist.ProcessGroup | None:
        sub = self.sub(name)
        return sub.get_group() if sub is not None else None

    @property
    def first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


def build_mesh(parallel: ParallelConfig, ctx: DistContext) -> Mesh:
    pp_rank, dp_rank, tp_rank = coordinates(ctx.rank, parallel)
    device_mesh = None
    if ctx.initialized and ctx.world_size > 1:
        device_mesh = init_device_mesh(
            ctx.device.type,
            (parallel.pp, parallel.dp, parallel.tp),
            mesh_dim_names=("pp", "dp", "tp"),
        )
    return Mesh(parallel.pp, parallel.dp, parallel.tp, pp_rank, dp_rank, tp_rank, device_mesh)
