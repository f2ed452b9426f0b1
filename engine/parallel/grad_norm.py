"""Global gradient norm over every way the parameters are split, with few collectives.

Gradients may be plain tensors (replicated, or whole on this rank), or DTensors sharded over
the tp and/or dp mesh dimensions (tensor parallel, FSDP2). Squared norms are summed locally per
"sharded over which dimensions" bucket, each bucket is summed over those dimensions' groups
(one scalar all-reduce per dimension), and pipeline stages add theirs over the pp group. Every
rank ends with the same value, so every rank takes the same decision from it (clipping,
divergence).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from engine.mesh import Mesh
from engine.parallel.tensor import is_dtensor


def _sharded_dims(grad: torch.Tensor) -> tuple[str, ...]:
    from torch.distributed.tensor import Shard  # loaded already: ``grad`` is a DTensor

    names = grad.device_mesh.mesh_dim_names or ()
    return tuple(names[i] for i, p in enumerate(grad.placements) if isinstance(p, Shard))


def total_norm(params: list[nn.Parameter], mesh: Mesh, device: torch.device) -> torch.Tensor:
    buckets: dict[tuple[tuple[str, ...], object], torch.Tensor] = {}
    for p in params:
        g = p.grad
        if g is None:
            continue
        if is_dtensor(g):
            key = (_sharded_dims(g), g.device_mesh)
            local = g.to_local()
        else:
            key, local = ((), None), g
        sq = local.detach().float().pow(2).sum()
        buckets[key] = buckets.get(key, torch.zeros((), device=device)) + sq
    total = torch.zeros((), device=device)
    for (dims, dmesh), sq in buckets.items():
        for name in dims:
            dist.all_reduce(sq, group=dmesh.get_group(name))
        total = total + sq
    pp_group = mesh.group("pp")
    if pp_group is not None:  # each stage holds different parameters
        dist.all_reduce(total, group=pp_group)
    return total.sqrt()


def clip_(params: list[nn.Parameter], norm: torch.Tensor, max_norm: float) -> None:
    """Scale gradients so their global norm is at most ``max_norm`` (no-op when it is 0)."""
    value = float(norm)
    if max_norm <= 0 or not math.isfinite(value) or value <= max_norm:
        return
    scale = max_norm / (value + 1e-6)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale)
