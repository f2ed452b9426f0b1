"""Every collective one rank runs in one optimizer step, for any layout, from shapes alone.

The one source of the communication formulas: ``analytic.expected_comm_bytes`` sums these per
kind to check the measured bytes, and the planner times them on a cluster's links. Plain
Python (no torch).

Conventions match what ``metrics.comm`` records: a collective's bytes are the size of its
*input* message (an all-gather counts this rank's shard). On gloo a reduce-scatter runs as an
all-reduce of the full buffer; NCCL runs a reduce-scatter of the same input.

Per rank, with Ψ the parameters this rank holds before data-parallel sharding (its pipeline
stages' share under tensor parallelism, ``engine.shapes``), m micro-batches of b rows of s
tokens, h the hidden size:
- data parallel (group dp): zero 0 all-reduces the gradients once per step (DDP buckets, or
  one per module under ``replicate``); zero 1 adds the broadcast of every updated partition;
  zero 2/3 (FSDP2) all-gather each unit's shard (the blocks, then the rest) before forward —
  once per micro-batch without a pipeline, once per step with one (the schedule keeps the
  gathered parameters until its last backward) — and again before backward under zero 3, then
  reduce-scatter the gradients once per step.
- tensor parallel (group tp), Megatron's f/g per block and micro-batch: forward all-reduces the
  attention and MLP outputs (2 × b·s·h); backward all-reduces the input gradients of the
  column-parallel projections (q, k, v, up, and gate with SwiGLU). With sequence parallelism
  each all-reduce becomes an all-gather of the sequence shard plus a reduce-scatter. The
  vocabulary-parallel head adds a backward all-reduce of b·s·h and its loss 3 fp32 values per
  token (max, sum of exponentials, target logit). Under autocast, what the norms produce (and
  its gradient) stays fp32 and what the projections produce is in the compute dtype.
  Full activation checkpointing repeats the blocks' forward collectives in backward, all but
  each block's last (the recomputation stops at the last tensor backward needs).
- pipeline parallel (group pp): each micro-batch's activations (b·s·h, the residual stream:
  fp32 under autocast, the compute dtype under ZeRO 2/3's policy; its sequence shard under
  sequence parallelism) cross every stage boundary forward
  and their gradients come back; boundaries between two stages of the same rank (the turn of
  a V) move nothing.

Checked against measured bytes on every layout of the contract suite
(tests/engine/test_layouts.py) and the bf16 and SwiGLU cases of test_comm_volume.py.
- the global gradient norm: a few 4-byte all-reduces (one per sharded mesh dimension, one
  over the pipeline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.config import RunConfig
from engine.metrics.memory_terms import stream_bytes
from engine.stages import local_stage_ids, n_stages, rank_params, stage_sizes

FP32 = 4
_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class Collective:
    """One kind of collective of one rank in one optimizer step."""

    kind: str  # all_reduce | all_gather | reduce_scatter | broadcast | send | recv
    group: str  # the mesh dimension it spans: dp | tp | pp
    bytes: float  # input message bytes, summed over the step's calls
    count: float  # calls per step
    phase: str  # forward | backward | step (after backward: optimizer, norm)


def collectives(cfg: RunConfig, pp_rank: int = 0, *, backend: str = "gloo") -> list[Collective]:
    """The collectives of one rank at pipeline position ``pp_rank`` (every data- and
    tensor-parallel rank of that position runs the same)."""
    out = _data_parallel(cfg, pp_rank, backend) + _tensor_parallel(cfg, pp_rank, backend)
    out += _pipeline(cfg, pp_rank) + _grad_norm(cfg)
    return [c for c in out if c.count > 0]


def n_micro(cfg: RunConfig) -> int:
    t = cfg.train
    return t.global_batch // (cfg.parallel.dp * t.micro_batch)


def _local_units(cfg: RunConfig, pp_rank: int) -> int:
    """FSDP2 units of this rank: one per group of ``parallel.fsdp_unit_layers`` blocks (none
    for 0), plus each stage's root (the rest), as ``engine.parallel.data.unit_groups``."""
    p, m = cfg.parallel, cfg.model
    total = n_stages(p)
    sizes = [m.n_layers] if total == 1 else stage_sizes(m, total)
    ids = [0] if total == 1 else local_stage_ids(pp_rank, p.pp, p.pp_schedule, p.pp_virtual_stages)
    k = p.fsdp_unit_layers
    return sum((math.ceil(sizes[s] / k) if k else 0) + 1 for s in ids)


def _data_parallel(cfg: RunConfig, pp_rank: int, backend: str) -> list[Collective]:
    p, t = cfg.parallel, cfg.train
    if p.dp == 1:
        return []
    psi = rank_params(cfg, pp_rank)
    grads = _BYTES[t.reduce_dtype] * psi
    if p.zero <= 1:
        if p.tp == 1 and p.pp == 1:  # DDP: gradient buckets of ddp_bucket_mb
            calls = math.ceil(grads / (p.ddp_bucket_mb * 2**20))
        else:  # replicate: the whole module's gradients in one reduction
            calls = 1
        out = [Collective("all_reduce", "dp", grads, calls, "backward")]
        if p.zero == 1:  # every rank broadcasts its updated partition: they add up to Ψ
            out.append(Collective("broadcast", "dp", FP32 * psi, p.dp, "step"))
        return out
    units = _local_units(cfg, pp_rank)
    gather_bytes = (_BYTES[t.precision] if t.precision != "fp32" else FP32) * psi / p.dp
    rounds = 1 if p.pp > 1 else n_micro(cfg)
    rounds *= 2 if p.zero == 3 else 1
    reduce_kind = "all_reduce" if backend == "gloo" else "reduce_scatter"
    return [
        Collective("all_gather", "dp", rounds * gather_bytes, rounds * units, "forward"),
        Collective(reduce_kind, "dp", grads, units, "backward"),
    ]


def _tensor_parallel(cfg: RunConfig, pp_rank: int, backend: str) -> list[Collective]:
    p, t, m = cfg.parallel, cfg.train, cfg.model
    if p.tp == 1:
        return []
    layers, first, last = _local_layers(cfg, pp_rank)
    micro = n_micro(cfg)
    act32 = FP32 * t.micro_batch * m.seq_len * m.d_model  # one b·s·h message in fp32
    act = act32 * _BYTES[t.precision] // FP32  # ... in autocast's compute dtype
    head = micro if last else 0
    # full checkpointing runs each block's forward again in backward, up to the last tensor
    # backward needs: every collective but the block's last one (its output is not saved)
    again = layers * micro if t.activation_checkpointing == "full" else 0
    # under autocast the norms' outputs (what the projections take in, and so their input
    # gradients) stay fp32, while the projections' outputs are in the compute dtype
    if p.sp:
        # per block: all-gathers of the norms' sequence shards before attention and MLP,
        # reduce-scatters of their outputs after, each mirrored in backward; the head gathers
        # its input and scatters its gradient; the embedding's slice to sequence shards
        # gathers its gradient back
        kind = "all_reduce" if backend == "gloo" else "reduce_scatter"
        fwd_gathers = 2 * (layers * micro + again) + head
        fwd_scatters = 2 * layers * micro + again
        bwd_gathers, bwd_scatters = 2 * layers * micro, 2 * layers * micro + head
        emb = micro if first else 0
        norms = _norm_tensors(cfg, layers, last)
        reads = 1 if p.dp > 1 else 3
        out = [
            Collective("all_gather", "tp", fwd_gathers * act32 / p.tp, fwd_gathers, "forward"),
            Collective(kind, "tp", fwd_scatters * act, fwd_scatters, "forward"),
            Collective("all_gather", "tp", bwd_gathers * act / p.tp, bwd_gathers, "backward"),
            Collective("all_gather", "tp", emb * act32 / p.tp, emb, "backward"),
            Collective(kind, "tp", bwd_scatters * act32, bwd_scatters, "backward"),
            # the norms' weights see only a sequence shard: their partial gradients are
            # summed over tp each time they are read after backward (measured: three reads,
            # one when a data-parallel wrapper holds the gradients)
            Collective("all_reduce", "tp", reads * FP32 * m.d_model * norms, reads * norms, "step"),
        ]
    else:
        fwd = 2 * layers * micro + again
        bwd = (3 + (2 if m.mlp == "swiglu" else 1)) * layers * micro + head
        out = [
            Collective("all_reduce", "tp", fwd * act, fwd, "forward"),
            Collective("all_reduce", "tp", bwd * act32, bwd, "backward"),
        ]
    if last:  # vocabulary-parallel cross-entropy: 3 fp32 values per token, 3 calls
        tokens = micro * t.micro_batch * m.seq_len
        out.append(Collective("all_reduce", "tp", 3 * FP32 * tokens, 3 * micro, "forward"))
    return out


def _local_layers(cfg: RunConfig, pp_rank: int) -> tuple[int, bool, bool]:
    """(blocks, holds the first stage, holds the last stage) of this pipeline rank."""
    p, m = cfg.parallel, cfg.model
    total = n_stages(p)
    if total == 1:
        return m.n_layers, True, True
    sizes = stage_sizes(m, total)
    ids = local_stage_ids(pp_rank, p.pp, p.pp_schedule, p.pp_virtual_stages)
    return sum(sizes[s] for s in ids), 0 in ids, total - 1 in ids


def _norm_tensors(cfg: RunConfig, layers: int, last: bool) -> int:
    m = cfg.model
    per_norm = 2 if m.norm == "layernorm" and m.bias else 1
    return per_norm * (2 * layers + (1 if last else 0))


def _pipeline(cfg: RunConfig, pp_rank: int) -> list[Collective]:
    p, t, m = cfg.parallel, cfg.train, cfg.model
    if p.pp == 1:
        return []
    total = n_stages(p)
    ids = set(local_stage_ids(pp_rank, p.pp, p.pp_schedule, p.pp_virtual_stages))
    # the residual stream (fp32 under autocast, the compute dtype under FSDP's policy:
    # memory_terms.stream_bytes); sequence shards of it under sequence parallelism
    act = stream_bytes(cfg) * t.micro_batch * m.seq_len * m.d_model // (p.tp if p.sp else 1)
    # each local stage sends its activations to the next stage and its input gradients to
    # the previous one, unless that stage is this rank's too (the turn of a V)
    outgoing = sum((s + 1 < total and s + 1 not in ids) + (s > 0 and s - 1 not in ids) for s in ids)
    micro = n_micro(cfg)
    return [
        Collective("send", "pp", outgoing * micro * act, outgoing * micro, "forward"),
        Collective("recv", "pp", outgoing * micro * act, outgoing * micro, "forward"),
    ]


def _grad_norm(cfg: RunConfig) -> list[Collective]:
    """A 4-byte all-reduce per group of gradients sharded alike and per mesh dimension they
    are sharded over (``engine.parallel.grad_norm``), and one over the pipeline. Plain
    replicated gradients (DDP) need none."""
    p = cfg.parallel
    fsdp = p.dp > 1 and p.zero >= 2
    if fsdp and p.tp > 1:  # dp x tp sharded, dp-only sharded, and the loss's tp-local part
        calls = 5
    else:
        calls = int(fsdp) + int(p.tp > 1)
    calls += int(p.pp > 1)
    group = "pp" if p.pp > 1 else ("tp" if p.tp > 1 else "dp")
    return [Collective("all_reduce", group, FP32 * calls, calls, "step")]
