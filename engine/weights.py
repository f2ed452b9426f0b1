"""Materialise a model built on the meta device: allocate this rank's shard, then fill it.

A rank never builds the whole model: the GPT (or one pipeline stage of it) is constructed on
``torch.device("meta")``, tensor parallelism and FSDP2 shard it there, and only then
``to_empty`` allocates this rank's parts (torchtitan's order). Each parameter's full initial
value is a function of its name and the seed (``engine.model.initial_value``); it is computed
one parameter at a time on the CPU and cut to this rank's shard with the parameter's own
DTensor placements, so every layout starts from the single-process reference's weights and
the host holds at most one full parameter beyond the shard.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.config import ModelConfig
from engine.model import GPT, initial_value
from engine.parallel.tensor import is_dtensor

Owners = list[tuple[str, nn.Module]]  # (qualified name in the whole GPT, module)


def param_owners(model: GPT) -> Owners:
    """The modules that hold parameters or buffers, under their names in the whole model.

    Taken before wrapping: activation checkpointing renames a block's parameters and FSDP2
    and tensor parallelism replace the parameter objects, but the owning modules stay.
    """
    return [
        (prefix, module)
        for prefix, module in model.named_modules()
        if module._parameters or module._buffers
    ]


def _local_part(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``full`` for a parameter laid out like ``like``."""
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    # src_data_rank=None: every rank holds the full value already; slice it, no communication
    sharded = distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    return sharded.to_local()


@torch.no_grad()
def materialize(
    root: nn.Module, owners: Owners, *, cfg: ModelConfig, seed: int, device: torch.device
) -> None:
    """Allocate ``root``'s meta tensors on ``device`` and initialise them by name.

    ``root``: the (possibly TP/FSDP2-wrapped) module whose tensors ``owners`` hold. On the
    meta device nothing happens: the parts keep their shapes and take no memory (planning and
    tests look at a big model's layout that way).
    """
    if device.type == "meta":
        return
    root.to_empty(device=device)
    for prefix, module in owners:
        for short, param in module.named_parameters(recurse=False):
            name = f"{prefix}.{short}" if prefix else short
            full = initial_value(cfg, name, param.shape, seed=seed)  # the global shape
            local = _local_part(full, param)
            target = param.to_local() if is_dtensor(param) else param
            if local.shape != target.shape:  # a programmer error: placements not understood
                raise AssertionError(f"{name}: shard {tuple(local.shape)} != {target.shape}")
            target.copy_(local)
            del full, local
        if isinstance(module, GPT):
            module.reset_buffers()
