"""FSDP2's gradient reduction on gloo as one in-place all-reduce of its flat buffer, of which
each rank keeps its own shard.

gloo has no reduce-scatter of its own worth the name: measured between two CPU ranks on a 21 MB
buffer (5.3M fp32 gradients), ``reduce_scatter_tensor`` took 23-28 ms and an all-reduce of the
same buffer 13-15 ms. The all-reduce moves what gloo's reduce-scatter moves (it runs one of the
full buffer: engine.metrics.volumes counts it so) and leaves every rank the whole sum, so the
shard is a slice of it. FSDP2 fills the buffer as [rank 0's shard | rank 1's | ...] and drops it
after the call, so reducing it in place costs no memory. NCCL keeps its real reduce-scatter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

try:  # the custom-collective interface of FSDP2 (PyTorch 2.8 and later)
    from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter
except ImportError:  # older PyTorch: FSDP2 keeps gloo's reduce-scatter
    ReduceScatter = None


def reduce_by_all_reduce(module: nn.Module) -> bool:
    """Make the FSDP2 ``module`` reduce its gradients with ``AllReduceScatter``; False where
    this PyTorch lacks the interface (the default reduce-scatter stays)."""
    if ReduceScatter is None or not hasattr(module, "set_custom_reduce_scatter"):
        return False
    module.set_custom_reduce_scatter(AllReduceScatter())
    return True


if ReduceScatter is not None:

    class AllReduceScatter(ReduceScatter):
        def allocate(
            self, size: Sequence[int], *, dtype: torch.dtype, device: torch.device
        ) -> torch.Tensor:
            return torch.empty(*size, dtype=dtype, device=device)

        def __call__(
            self,
            output_tensor: torch.Tensor,
            input_tensor: torch.Tensor,
            group: dist.ProcessGroup,
            op: object,
            async_op: bool = False,
        ) -> None:
            # FSDP2 calls it synchronously on CPU; an asynchronous caller gets it done too
            del async_op
            dist.all_reduce(input_tensor, op=op, group=group)
            shards = input_tensor.view(dist.get_world_size(group), -1)
            output_tensor.copy_(shards[dist.get_rank(group)])
