"""Data parallelism (ZeRO stage 0): DistributedDataParallel over the data-parallel ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from engine.config import ParallelConfig


def apply_data_parallel(
    model: nn.Module, parallel: ParallelConfig, device: torch.device
) -> nn.Module:
    """Wrap ``model`` in DDP when dp > 1; a single rank trains the bare module."""
    if parallel.dp == 1:
        return model
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=parallel.ddp_bucket_mb,
    )


def no_sync(model: nn.Module, *, last_micro_batch: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce on every micro-batch but the last of a step."""
    if isinstance(model, DistributedDataParallel) and not last_micro_batch:
        return model.no_sync()
    return contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    return unwrap(model).parameters()
