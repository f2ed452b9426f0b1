"""Data parallelism and ZeRO over the data-parallel mesh dimension.

- zero 0: DDP (composable ``replicate`` when tp or pp > 1); every rank holds everything and
  gradients are all-reduced (DDP's in the flat buckets they are views of).
- zero 1: DDP + ZeroRedundancyOptimizer: each rank keeps the optimizer state of 1/dp of the
  parameters and broadcasts its updated share (the ZeRO paper's stage 1, P_os).
- zero 2: FSDP2 with reshard_after_forward=False: parameters, gradients and optimizer state
  sharded; the gathered parameters are kept from forward to backward.
- zero 3: FSDP2 with reshard_after_forward=True: as 2, but parameters are gathered again for
  backward (the paper's stage 3, P_os+g+p).

How zero 2 differs from the ZeRO paper's stage 2 (P_os+g): FSDP2 also shards the parameters at
rest, between steps; what makes it stage-2-like is that the unsharded parameters live from
forward to backward, so each step gathers them once, not twice, and gradients are
reduce-scattered into shards. Its memory lies between the paper's stages 2 and 3. On gloo
that reduction is one all-reduce of FSDP2's flat buffer (engine.parallel.gloo_reduce), about
twice as fast as gloo's reduce-scatter of it.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from engine.config import ParallelConfig
from engine.mesh import Mesh
from engine.parallel.gloo_reduce import reduce_by_all_reduce
from engine.parallel.tensor import is_dtensor
from engine.precision import DTYPES

# FSDP2 and ZeroRedundancyOptimizer are imported by the layouts that use them: with DTensor
# under them they cost most of a second per rank, which plain DDP runs need not pay
if TYPE_CHECKING:
    from torch.distributed.fsdp import MixedPrecisionPolicy


def _mixed_precision_policy(precision: str, reduce_dtype: str) -> MixedPrecisionPolicy:
    """Compute in ``precision``; reduce gradients in ``reduce_dtype`` (fp32 by default); the
    sharded master weights and optimizer state stay fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    param = DTYPES[precision] if precision != "fp32" else None
    return MixedPrecisionPolicy(param_dtype=param, reduce_dtype=DTYPES[reduce_dtype])


def _fsdp(
    module: nn.Module,
    mesh: Mesh,
    *,
    zero: int,
    policy: MixedPrecisionPolicy,
    units: list[nn.Module] | None,
    unit_layers: int = 1,
    gloo: bool = False,
) -> nn.Module:
    from torch.distributed.fsdp import FSDPModule, fully_shard

    kw = {"mesh": mesh.sub("dp"), "reshard_after_forward": zero == 3, "mp_policy": policy}
    if units is None:  # the GPT's blocks
        units = list(module.layers.values())
    groups = unit_groups(units, unit_layers)
    for group in groups:  # one all-gather / reduce-scatter unit per group of blocks
        fully_shard(group if len(group) > 1 else group[0], **kw)
    fully_shard(module, **kw)  # the rest: embeddings, final norm and head (or everything)
    if gloo:
        for part in module.modules():
            if isinstance(part, FSDPModule):
                reduce_by_all_reduce(part)
    if zero == 2:
        _prefetch_forward(module, [group[0] for group in groups])
    return module


def unit_groups(units: list[nn.Module], unit_layers: int) -> list[list[nn.Module]]:
    """Consecutive blocks, ``unit_layers`` to a group (the last may hold fewer); none for 0,
    which leaves every parameter to the root unit. Fewer, larger units mean fewer
    collectives: on gloo, where FSDP2 waits for each one in turn, that is most of their cost
    (measured on CPU: one unit for the whole model steps ~7% faster than one per block)."""
    if unit_layers == 0:
        return []
    return [units[i : i + unit_layers] for i in range(0, len(units), unit_layers)]


def _prefetch_forward(root: nn.Module, units: list[nn.Module]) -> None:
    """Issue each unit's all-gather as the one before it starts its forward, so that it runs
    while that one computes. Free under ZeRO-2: every gathered unit is kept until backward
    anyway, so the peak holds no more than without it (ZeRO-3 would hold one more block)."""
    chain = [root, *units]
    for unit, following in itertools.pairwise(chain):
        unit.set_modules_to_forward_prefetch([following])


def apply_data_parallel(
    module: nn.Module,
    parallel: ParallelConfig,
    mesh: Mesh,
    *,
    device: torch.device,
    precision: str,
    reduce_dtype: str = "fp32",
    units: list[nn.Module] | None = None,
) -> nn.Module:
    """Wrap ``module`` for its data-parallel group. ``units``: the sub-modules FSDP2 gathers
    one at a time under ZeRO 2/3 (default: a GPT's blocks), ``parallel.fsdp_unit_layers`` of
    them together."""
    if mesh.dp == 1:
        return module
    if parallel.zero >= 2:
        policy = _mixed_precision_policy(precision, reduce_dtype)
        return _fsdp(
            module,
            mesh,
            zero=parallel.zero,
            policy=policy,
            units=units,
            unit_layers=parallel.fsdp_unit_layers,
            gloo=device.type == "cpu",
        )
    if mesh.tp > 1 or mesh.pp > 1:
        # DDP can neither hold DTensor (tensor-parallel) parameters nor take one backward per
        # micro-batch from a pipeline schedule; the composable, FSDP-based replicate can
        from torch.distributed._composable.replicate_with_fsdp import replicate
        from torch.distributed.fsdp import MixedPrecisionPolicy

        # compute dtype comes from autocast here; the policy sets only the reduction dtype
        policy = MixedPrecisionPolicy(reduce_dtype=DTYPES[reduce_dtype])
        return replicate(module, mesh=mesh.sub("dp"), mp_policy=policy)
    ddp = DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        process_group=mesh.group("dp"),
        bucket_cap_mb=parallel.ddp_bucket_mb,
        # the gradients are views into the flat buckets the all-reduce runs on: no copy of
        # every gradient back out of them after it, and no second gradient-sized buffer.
        # static_graph stays off: with no_sync (gradient accumulation) the reducer fails an
        # internal assertion on the first backward (torch 2.13)
        gradient_as_bucket_view=True,
    )
    if reduce_dtype == "bf16":
        ddp.register_comm_hook(mesh.group("dp"), _bf16_allreduce_hook)
    return ddp


def _bf16_allreduce_hook(group, bucket):  # no annotations: DDP inspects them
    """Average a gradient bucket in bf16 (half the bytes), then cast back. PyTorch's own
    bf16_compress_hook requires NCCL; this one runs on gloo too."""
    buffer = bucket.buffer()
    low = buffer.to(torch.bfloat16).div_(dist.get_world_size(group))
    work = dist.all_reduce(low, group=group, async_op=True)

    def restore(fut: torch.futures.Future) -> torch.Tensor:
        buffer.copy_(fut.value()[0])
        return buffer

    return work.get_future().then(restore)


# AdamW as one fused kernel per parameter group (CPU and CUDA) rather than torch's default,
# which on CPU runs ~10 elementwise ops and a host read of the step count per parameter, and on
# DTensors (FSDP2, tensor parallel) pays DTensor dispatch for each of them
ADAMW_IMPL = {"fused": True}


def _groups(params: list[nn.Parameter]) -> list[nn.Parameter] | list[dict]:
    """One group per kind of parameter: plain tensors, and DTensors per device mesh (a fused
    kernel takes neither mixed tensors and DTensors nor several meshes). A single kind stays a
    plain list, the optimizer's usual one group."""
    groups: dict[object, list[nn.Parameter]] = {}
    for p in params:
        groups.setdefault(p.device_mesh if is_dtensor(p) else None, []).append(p)
    return params if len(groups) <= 1 else [{"params": g} for g in groups.values()]


def make_optimizer(
    params: list[nn.Parameter], parallel: ParallelConfig, mesh: Mesh, **adamw
) -> torch.optim.Optimizer:
    adamw = {**ADAMW_IMPL, **adamw}
    if parallel.zero == 1 and mesh.dp > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        # each data-parallel rank keeps Adam state for its shard and broadcasts its update
        return ZeroRedundancyOptimizer(
            _groups(params),
            optimizer_class=torch.optim.AdamW,
            process_group=mesh.group("dp"),
            parameters_as_bucket_view=True,
            **adamw,
        )
    return torch.optim.AdamW(_groups(params), **adamw)


def no_sync(model: nn.Module, *, last_micro_batch: bool) -> contextlib.AbstractContextManager:
    """Reduce gradients only after the last micro-batch of a step (gradient accumulation)."""
    if isinstance(model, DistributedDataParallel) and not last_micro_batch:
        return model.no_sync()
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported: no FSDP module exists
    if fsdp is not None and isinstance(model, fsdp.FSDPModule):
        model.set_requires_gradient_sync(last_micro_batch)
    return contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model
