"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019) through DTensor's parallelize_module.

Attention: q/k/v column-parallel (each rank owns n_heads/tp heads), output projection
row-parallel. MLP: up (and gate) column-parallel, down row-parallel. Per block that is one
all-reduce in forward (the row-parallel output, Megatron's "g") and one in backward (the
column-parallel input gradient, "f").

Sequence parallelism (Korthikanti et al. 2022) also splits the norms' activations along the
sequence: the all-reduces become reduce-scatter + all-gather pairs and norm activations shrink
by tp. The embeddings stay replicated; the first block's input is sliced to its sequence shard.

The output head is column-parallel over the vocabulary and the loss is computed on vocabulary
shards (``loss_parallel``), so full logits are never gathered.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

# torch.distributed.tensor is imported where a layout uses it (tensor parallel, FSDP2), not at
# module level: it costs most of a second per rank, and data-parallel runs never need it


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a DTensor, without importing DTensor's module: until something has
    imported it, no DTensor exists."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def full_tensor_of(t: torch.Tensor) -> torch.Tensor:
    """The whole value of ``t``: a DTensor's shards gathered (a collective: every rank of its
    mesh must call this), a plain tensor as it is."""
    return t.full_tensor() if is_dtensor(t) else t


def block_plan(*, sequence_parallel: bool, swiglu: bool) -> dict:
    """The parallel style of every sub-module of one Block."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    seq = Shard(1)  # activations (B, T, C) split along T
    plan: dict = {
        "attn.wq": ColwiseParallel(),
        "attn.wk": ColwiseParallel(),
        "attn.wv": ColwiseParallel(),
        "attn.wo": RowwiseParallel(output_layouts=seq if sequence_parallel else Replicate()),
        "mlp.up": ColwiseParallel(),
        "mlp.down": RowwiseParallel(output_layouts=seq if sequence_parallel else Replicate()),
    }
    if swiglu:
        plan["mlp.gate"] = ColwiseParallel()
    if sequence_parallel:
        plan.update(
            {
                "attn_norm": SequenceParallel(),
                "mlp_norm": SequenceParallel(),
                # the norms hand sequence shards on; attention and MLP need the whole sequence
                "attn": PrepareModuleInput(
                    input_layouts=(seq, None), desired_input_layouts=(Replicate(), None)
                ),
                "mlp": PrepareModuleInput(
                    input_layouts=(seq,), desired_input_layouts=(Replicate(),)
                ),
            }
        )
    return plan


def apply_tensor_parallel(
    model: nn.Module, tp_mesh: DeviceMesh, *, sequence_parallel: bool
) -> None:
    """Shard a GPT (or one pipeline stage of it) in place over ``tp_mesh``."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        SequenceParallel,
        parallelize_module,
    )

    swiglu = model.cfg.mlp == "swiglu"
    layer_ids = list(model.layers.keys())
    for i, layer_id in enumerate(layer_ids):
        plan = block_plan(sequence_parallel=sequence_parallel, swiglu=swiglu)
        if sequence_parallel and i == 0 and model.tok_emb is not None:
            # the replicated embedding output becomes sequence shards (a local slice, no comm)
            plan[""] = PrepareModuleInput(
                input_layouts=(Replicate(), None),
                desired_input_layouts=(Shard(1), None),
                use_local_output=True,  # the residual stream stays plain local tensors
            )
        parallelize_module(model.layers[layer_id], tp_mesh, plan)
    if model.head is not None:
        if sequence_parallel:
            parallelize_module(model.norm, tp_mesh, SequenceParallel())
        parallelize_module(
            model.head,
            tp_mesh,
            ColwiseParallel(
                input_layouts=Shard(1) if sequence_parallel else Replicate(),
                output_layouts=Shard(-1),  # vocabulary shards, for loss_parallel
                use_local_output=False,
            ),
        )


def loss_context(tp: int) -> contextlib.AbstractContextManager:
    """Cross-entropy over vocabulary-sharded logits (forward and backward must run inside)."""
    if tp == 1:
        return contextlib.nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel

    return loss_parallel()
