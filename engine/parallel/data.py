"""Data parallelism and ZeRO over the data-parallel mesh dimension.

- zero 0: DDP (composable ``replicate`` when tp or pp > 1); every rank holds everything and
  gradients are all-reduced.
- zero 1: DDP + ZeroRedundancyOptimizer: each rank keeps the optimizer state of 1/dp of the
  parameters and broadcasts its updated share (the ZeRO paper's stage 1, P_os).
- zero 2: FSDP2 with reshard_after_forward=False: parameters, gradients and optimizer state
  sharded; the gathered parameters are kept from forward to backward.
- zero 3: FSDP2 with reshard_after_forward=True: as 2, but parameters are gathered again for
  backward (the paper's stage 3, P_os+g+p).

How zero 2 differs from the ZeRO paper's stage 2 (P_os+g): FSDP2 also shards the parameters at
rest, between steps; what makes it stage-2-like is that the unsharded parameters live from
forward to backward, so each step gathers them once, not twice, and gradients are
reduce-scattered into shards. Its memory lies between the paper's stages 2 and 3.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

from engine.config import ParallelConfig
from engine.mesh import Mesh

_LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _fsdp(
    module: nn.Module, mesh: Mesh, *, zero: int, precision: str, units: list[nn.Module] | None
) -> nn.Module:
    policy = MixedPrecisionPolicy()
    if precision in _LOW:
        # compute in low precision, reduce gradients in fp32 (the master weights stay fp32)
        policy = MixedPrecisionPolicy(param_dtype=_LOW[precision], reduce_dtype=torch.float32)
    kw = {"mesh": mesh.sub("dp"), "reshard_after_forward": zero == 3, "mp_policy": policy}
    if units is None:  # the GPT's blocks
        units = list(module.layers.values())
    for unit in units:  # one all-gather / reduce-scatter unit per block
        fully_shard(unit, **kw)
    fully_shard(module, **kw)  # the rest: embeddings, final norm and head
    return module


def apply_data_parallel(
    module: nn.Module,
    parallel: ParallelConfig,
    mesh: Mesh,
    *,
    device: torch.device,
    precision: str,
    units: list[nn.Module] | None = None,
) -> nn.Module:
    """Wrap ``module`` for its data-parallel group. ``units``: the sub-modules FSDP2 gathers
    one at a time under ZeRO 2/3 (default: a GPT's blocks)."""
    if mesh.dp == 1:
        return module
    if parallel.zero >= 2:
        return _fsdp(module, mesh, zero=parallel.zero, precision=precision, units=units)
    if mesh.tp > 1 or mesh.pp > 1:
        # DDP can neither hold DTensor (tensor-parallel) parameters nor take one backward per
        # micro-batch from a pipeline schedule; the composable, FSDP-based replicate can
        from torch.distributed._composable.replicate_with_fsdp import replicate

        return replicate(module, mesh=mesh.sub("dp"))
    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        process_group=mesh.group("dp"),
        bucket_cap_mb=parallel.ddp_bucket_mb,
    )


def make_optimizer(
    params: list[nn.Parameter], parallel: ParallelConfig, mesh: Mesh, **adamw
) -> torch.optim.Optimizer:
    if parallel.zero == 1 and mesh.dp > 1:
        # each data-parallel rank keeps Adam state for its shard and broadcasts its update
        return ZeroRedundancyOptimizer(
            params,
            optimizer_class=torch.optim.AdamW,
            process_group=mesh.group("dp"),
            parameters_as_bucket_view=True,
            **adamw,
        )
    return torch.optim.AdamW(params, **adamw)


def no_sync(model: nn.Module, *, last_micro_batch: bool) -> contextlib.AbstractContextManager:
    """Reduce gradients only after the last micro-batch of a step (gradient accumulation)."""
    if isinstance(model, DistributedDataParallel) and not last_micro_batch:
        return model.no_sync()
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(last_micro_batch)
    return contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model
