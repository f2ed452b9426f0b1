"""Activation checkpointing: trade recomputation in backward for activation memory.

- ``full``: each block keeps only its input; the whole block is recomputed in backward
  (Chen et al. 2016).
- ``selective``: each block keeps the outputs of its matmuls and of attention and recomputes
  the cheap element-wise work (norms, activations, residual adds) — op-level selective
  recomputation in the spirit of Korthikanti et al. 2022, who recompute the parts of a block
  whose memory is large but whose FLOPs are small.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from engine.config import AC_MODES

MODES = AC_MODES  # declared torch-free in engine.config

_SAVE = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _save_matmuls_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE else CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_module(block: nn.Module, mode: str) -> nn.Module:
    """``block`` wrapped for activation checkpointing in ``mode`` ("none": unchanged)."""
    if mode == "none":
        return block
    kw = {"preserve_rng_state": False}
    if mode == "selective":
        kw["context_fn"] = partial(create_selective_checkpoint_contexts, _save_matmuls_policy)
    return checkpoint_wrapper(block, **kw)
