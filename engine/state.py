"""The model's full, unsharded parameters, whatever the layout.

Each rank turns its parts (DDP/FSDP/replicate-wrapped, tensor-parallel, checkpoint-wrapped)
into plain tensors under the reference model's names; pipeline stages hold disjoint names, so
the union over ranks is the whole model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def local_full_state(modules: list[nn.Module]) -> dict[str, torch.Tensor]:
    """This rank's parameters, gathered over tp/dp shards (a collective: call on every rank)."""
    # imported here: distributed checkpointing's modules cost a rank's start-up a tenth of a
    # second, and only runs that dump or save their parameters come here
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=False)
    out: dict[str, torch.Tensor] = {}
    for module in modules:
        state = get_model_state_dict(module, options=options)
        out.update({k: v.detach().cpu().clone() for k, v in state.items()})
    return out


def gather_full_state(modules: list[nn.Module], *, initialized: bool) -> dict[str, torch.Tensor]:
    """Every parameter of the model, on every rank."""
    local = local_full_state(modules)
    if not initialized or not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    parts: list[dict | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    merged: dict[str, torch.Tensor] = {}
    for part in parts:
        merged.update(part or {})
    return merged
