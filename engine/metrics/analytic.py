"""Analytic communication volume per step and per rank, to check the measured bytes against.

Conventions match what ``metrics.comm`` records from profiler events: a collective's bytes are
the size of its *input* message. So an all-gather counts this rank's shard, and on gloo a
reduce-scatter runs as an all-reduce of the full buffer (it shows up as ``all_reduce`` with the
full size) — NCCL would move (n-1)/n of it instead. fp32 parameters and gradients (4 bytes).

Notation: Ψ parameters on this rank before data-parallel sharding, dp data-parallel ranks,
m micro-batches per step, b micro-batch rows, s sequence length, h hidden size, L layers.
"""

from __future__ import annotations

from engine.config import RunConfig
from engine.model import count_params

FP32 = 4


def expected_comm_bytes(cfg: RunConfig) -> dict[str, float] | None:
    """Bytes per step per rank by collective kind, for the layouts covered here (data parallel
    with any ZeRO stage, tensor parallel, pipeline parallel, each alone); None otherwise."""
    p, t, m = cfg.parallel, cfg.train, cfg.model
    n_micro = t.global_batch // (p.dp * t.micro_batch)
    psi = count_params(m)["total"]
    if p.tp == 1 and p.pp == 1:
        return _data_parallel(p.dp, p.zero, psi, n_micro)
    if p.dp == 1 and p.pp == 1 and not p.sp and m.mlp == "gelu":
        return _tensor_parallel(t.micro_batch * n_micro, m.seq_len, m.d_model, m.n_layers)
    if p.dp == 1 and p.tp == 1 and p.pp == 2 and p.pp_schedule in ("gpipe", "1f1b"):
        return _pipeline_two_stages(t.micro_batch, n_micro, m.seq_len, m.d_model)
    return None


def _data_parallel(dp: int, zero: int, psi: int, n_micro: int) -> dict[str, float]:
    if dp == 1:
        return {}
    grads = FP32 * psi
    if zero == 0:  # DDP: one all-reduce of every gradient, after the last micro-batch
        return {"all_reduce": grads}
    if zero == 1:  # + each rank broadcasts its updated partition: the partitions add up to Ψ
        return {"all_reduce": grads, "broadcast": FP32 * psi}
    # FSDP2: all-gather this rank's shard before each micro-batch's forward, and again before
    # its backward under ZeRO-3; reduce-scatter (gloo: all-reduce) the gradients once per step,
    # plus the 4-byte all-reduce of the gradient-norm partial sums
    gathers = n_micro * (2 if zero == 3 else 1)
    return {"all_gather": gathers * FP32 * psi / dp, "all_reduce": grads + FP32}


def _tensor_parallel(rows: int, s: int, h: int, n_layers: int) -> dict[str, float]:
    # per block: forward all-reduces the attention and MLP outputs (Megatron's g, 2 x b·s·h);
    # backward all-reduces the input gradients of the 3 column-parallel q/k/v projections and
    # of the MLP's up projection (f, 4 x b·s·h). The column-parallel head adds one backward
    # all-reduce of b·s·h; the vocabulary-parallel loss reduces 3 values per token (max, sum of
    # exponentials, target logit); the gradient norm adds 4 bytes.
    act = FP32 * rows * s * h
    return {"all_reduce": (6 * n_layers + 1) * act + 3 * FP32 * rows * s + FP32}


def _pipeline_two_stages(b: int, n_micro: int, s: int, h: int) -> dict[str, float]:
    # each micro-batch's activations go forward across the stage boundary and their gradients
    # come back: per rank, m sends and m receives of b·s·h; the gradient norm sums over stages
    act = FP32 * b * s * h
    return {"send": n_micro * act, "recv": n_micro * act, "all_reduce": FP32}
