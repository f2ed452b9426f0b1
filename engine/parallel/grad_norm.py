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
    grads: dict[tuple[tuple[str, ...], object], list[torch.Tensor]] = {}
    for p in params:
        g = p.grad
        if g is None:
            continue
        if is_dtensor(g):
            key = (_sharded_dims(g), g.device_mesh)
            local = g.to_local()
        else:
            key, local = ((), None), g
        grads.setdefault(key, []).append(local.detach())
    total = torch.zeros((), device=device)
    for (dims, dmesh), group in grads.items():
        # one multi-tensor norm per bucket: no gradient-sized temporary, few dispatches
        norms = torch._foreach_norm(group, 2.0, dtype=torch.float32)
        sq = torch.stack(norms).square().sum()
        for name in dims:
            dist.all_reduce(sq, group=dmesh.get_group(name))
        total = total + sq
    pp_group = mesh.group("pp")
    if pp_group is not None:  # each stage holds different parameters
        dist.all_reduce(total, group=pp_group)
    return total.sqrt()


def clip_(params: list[nn.Parameter], norm: torch.Tensor, max_norm: float) -> None:
    """Scale gradients so their global norm is at most ``max_norm`` (no-op when it is 0)."""
    if max_norm <= 0:  # no clipping asked: no host read of the norm either
        return
    value = float(norm)
    if not math.isfinite(value) or value <= max_norm:
        return
    scale = max_norm / (value + 1e-6)
    grads = [p.grad.to_local() if is_dtensor(p.grad) else p.grad for p in params]
    torch._foreach_mul_([g for g in grads if g is not None], scale)
