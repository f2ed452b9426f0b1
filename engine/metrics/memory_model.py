"""Analytic peak memory per rank, split into parameters, gradients, optimizer state and
activations, to put next to the measured peak.

Model states follow the ZeRO paper (Rajbhandari et al. 2020, section 3): fp32 parameters (4Ψ),
gradients (4Ψ) and Adam's two moments (8Ψ), divided by the data-parallel degree where a ZeRO
stage shards them. Activations follow Korthikanti et al. 2022 (section 4.1), re-derived for this
block: pre-norm, separate q/k/v projections, fused attention (no s² score matrix is kept), no
dropout. Per layer and token, backward keeps (h = d_model, f = d_ff):

    norm inputs 2h (residual stream) + norm outputs 2h + q, k, v 3h + attention output h
    + output-projection input h + MLP up output and activation output 2f (SwiGLU: 4f)
    = 17h with f = 4h, GELU (Korthikanti's 34sbh counts 2-byte elements; here bytes depend on
    the precision), RMSNorm keeps one more h per norm (its normalised input). The residual
    stream is fp32 under autocast, but in the compute dtype when FSDP's mixed-precision policy
    (ZeRO 2/3) casts the parameters themselves.

Tensor parallelism divides everything between the column- and row-parallel linears by tp;
sequence parallelism also divides the norms' inputs. The last stage adds the loss head: the
logits, log-probabilities and, at the start of backward, two gradients of that size (the fp32
copy of low-precision logits is freed by then). With activation checkpointing a layer keeps
only its input (full) or also its matmul and attention outputs (selective), and backward
recomputes one layer at a time, after the loss head's tensors are gone.

Pipeline stages hold, across steps, a receive buffer per micro-batch for their input and for
their output's gradient, and the last stage the previous step's logits; during the step, the
gradients of their inputs accumulate too. In 1F1B's steady state the deepest set of
micro-batches meets the gradients of earlier ones; where every micro-batch is forwarded before
the first backward, the backwards walk the rank's stages (later stage first) micro-batch by
micro-batch, each moment holding what is not yet consumed and the gradients of the stages
begun. Data parallelism under a pipeline schedule reduces a stage's gradients once all its
backwards are done, not block by block: a finished stage then holds them sharded and has freed
its gathered parameters. A split backward (zero-bubble schedules) keeps, between a layer's
input pass and its deferred weight pass, the gradients at its weight-bearing ops' outputs.

The moments that compete for the peak: each backward's start at the loss head (activations,
loss head, gradients so far), the same moment after the loss head when a ZeRO-3 block gathers
its parameters, with checkpointing each layer's recomputation (and at the last one every later
layer's gradients), and the optimizer step (all gradients; the fused AdamW adds none). The largest
is the prediction; its parts are the breakdown. DDP holds its flat gradient buckets throughout;
the gradients are views into them, each copied in as it is computed, so only the earlier
micro-batches' gradients, which accumulate outside them, come on top.

Building the model is a third, host-side moment (``host_build``, reported beside the parts and
not in ``total``): each rank builds its part on the meta device and initialises it one full
parameter at a time on the CPU (engine/weights.py), so the host holds the largest full
parameter this rank initialises and its slice, plus, on a CPU device, the rank's shard itself.
Embedding and head count with the padded vocabulary (model.vocab_pad_multiple).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from engine.config import RunConfig
from engine.metrics.memory_backward import backward_peak
from engine.metrics.memory_terms import (
    COMPUTE_BYTES,
    FP32,
    largest_param,
    stage_buffers,
)
from engine.shapes import block_params, stage_params
from engine.stages import coordinates, local_stage_ids, rank_params, stage_sizes, stages_per_rank


@dataclass(frozen=True)
class MemoryPrediction:
    params: int
    grads: int
    optimizer: int
    activations: int
    host_build: int = 0  # peak host bytes while the model part is built (not in total)

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def host_build_bytes(cfg: RunConfig, rank: int, device: str) -> int:
    """Peak host bytes while rank ``rank`` builds and initialises its part (module docstring)."""
    pp_rank, _, _ = coordinates(rank, cfg.parallel)
    return _host_build(cfg, pp_rank, *_local_stages(cfg, pp_rank), device)


def _host_build(
    cfg: RunConfig, pp_rank: int, ids: list[int], sizes: tuple[int, ...], n_stages: int, device: str
) -> int:
    p = cfg.parallel
    largest = max(
        largest_param(cfg, layers=sizes[s], first=s == 0, last=s == n_stages - 1) for s in ids
    )
    # the full value, and this rank's slice of it when a copy is needed to make it contiguous
    transient = FP32 * (largest + (largest // p.tp if p.tp > 1 else 0))
    if device != "cpu":
        return transient
    psi = rank_params(cfg, pp_rank)
    shard = FP32 * psi // (p.dp if p.dp > 1 and p.zero >= 2 else 1)
    return shard + transient


def _local_stages(cfg: RunConfig, pp_rank: int) -> tuple[list[int], tuple[int, ...], int]:
    """(this pipeline rank's stage ids, number of layers of every stage, number of stages)."""
    p, m = cfg.parallel, cfg.model
    n_stages = p.pp * stages_per_rank(p.pp_schedule, p.pp_virtual_stages)
    if p.pp == 1:
        return [0], (m.n_layers,), 1
    ids = local_stage_ids(pp_rank, p.pp, p.pp_schedule, p.pp_virtual_stages)
    return ids, stage_sizes(m, n_stages), n_stages


def fsdp_unit_params(cfg: RunConfig, psi: int) -> int:
    """Parameters of the largest FSDP2 unit on a rank holding ``psi`` of them: a group of
    ``parallel.fsdp_unit_layers`` blocks (``engine.parallel.data.unit_groups``), or ``psi``
    when one unit holds every parameter (0)."""
    k = cfg.parallel.fsdp_unit_layers
    if k == 0:
        return psi
    return min(k, cfg.model.n_layers) * block_params(cfg.model, cfg.parallel.tp)


def predict(cfg: RunConfig, rank: int, device: str) -> MemoryPrediction:
    """Predicted peak of rank ``rank`` (global rank) of a validated config on ``device``
    ("cpu" or "cuda")."""
    p, t = cfg.parallel, cfg.train
    pp_rank, _, _ = coordinates(rank, p)
    c = COMPUTE_BYTES[t.precision]
    n_micro = t.global_batch // (p.dp * t.micro_batch)
    ids, sizes, n_stages = _local_stages(cfg, pp_rank)
    psi = rank_params(cfg, pp_rank)
    last = (n_stages - 1) in ids
    dp, zero = p.dp, p.zero if p.dp > 1 else 0
    ddp = zero in (0, 1) and dp > 1 and p.tp == 1 and p.pp == 1
    # with tp or pp, zero 0/1 replicate through FSDP's machinery (engine/parallel/data.py)
    replicated = zero in (0, 1) and dp > 1 and not ddp

    # model states (ZeRO paper): fp32 master weights, gradients, Adam moments
    master = FP32 * psi // (dp if zero >= 2 else 1)
    grads_full = FP32 * psi // (dp if zero >= 2 else 1)
    # DDP's flat gradient buckets, allocated once. The reduced gradients are views into them
    # (gradient_as_bucket_view, engine/parallel/data.py); the earlier micro-batches' gradients
    # are not (no_sync leaves them where autograd put them, until the last backward copies them in)
    buckets = FP32 * psi if ddp else 0
    moments = 2 * FP32 * psi // (dp if zero >= 1 else 1)
    # parameters in the compute dtype while forward/backward run: FSDP's gathered copies
    # (kept forward to backward under zero 2, one block plus the prefetched next under zero 3),
    # or autocast's cached low-precision copies
    # the parameters of FSDP2's largest unit: parallel.fsdp_unit_layers blocks, or all of them
    unit = fsdp_unit_params(cfg, psi)
    if zero == 2:
        compute_copy = c * psi
    elif zero == 3:
        # one unit, and the next one prefetched (a single unit has no next one)
        compute_copy = c * psi if unit == psi else 2 * c * unit
        if p.pp > 1:
            # a pipeline stage's backward keeps the blocks it gathers (the schedule turns
            # resharding after backward off until the stage's gradients are reduced): the
            # largest stage's blocks, and no prefetch beyond the stage
            compute_copy = c * max(sizes[s] for s in ids) * block_params(cfg.model, p.tp)
    else:
        compute_copy = c * psi if c != FP32 else 0
    if replicated:
        # replicate is FSDP over a one-rank shard group: its "all-gather" copies every
        # parameter into an unsharded fp32 buffer (its policy sets no parameter dtype; autocast
        # casts from that copy) that lives from forward to the end of backward
        compute_copy += FP32 * psi
    # gradients of earlier micro-batches; FSDP accumulates them unsharded (no reduce-scatter
    # until the last micro-batch)
    accumulated = (FP32 * psi if zero >= 2 else grads_full) if n_micro > 1 else 0
    buffers = stage_buffers(cfg, ids, n_stages)
    base = MemoryPrediction(
        params=master + compute_copy, grads=buckets, optimizer=moments, activations=buffers
    )
    stages = [
        (
            sizes[s],
            stage_params(
                cfg.model,
                cfg.parallel.tp,
                layers=sizes[s],
                first=s == 0,
                last=s == n_stages - 1,
            ),
            s == 0,
        )
        for s in sorted(ids, reverse=True)
    ]
    gather = 0
    if zero == 3:
        # a block's pre-backward hook gathers the next block while this one is unsharded:
        # the collective's flat output buffer exists until it is copied out into the
        # parameters, and gloo (CPU) stages the gathered bytes in one more buffer of that size
        gather = (2 if device == "cpu" else 1) * c * unit
        if unit == psi:  # one unit: its gather's output buffer, copied out into compute_copy
            gather = c * psi
    # under a pipeline schedule, data parallelism reduces a stage's gradients once all its
    # micro-batches' backwards are done (its reduce-grad action, not block by block): from
    # then on the stage holds them sharded (ZeRO 2/3) or reduced in place, and its gathered
    # parameters are freed
    fsdp = p.pp > 1 and dp > 1 and (zero >= 2 or replicated)

    def reduced_bytes(n: int) -> int:
        return FP32 * n // (dp if zero >= 2 else 1) if fsdp else FP32 * n

    def released(n: int) -> int:
        if not fsdp:
            return 0
        return (c * n if zero == 2 else 0) + (FP32 * n if replicated else 0)

    backward = backward_peak(
        cfg,
        base,
        accumulated=accumulated,
        stages=stages,
        last=last,
        pp_rank=pp_rank,
        gather=gather,
        reduced_bytes=reduced_bytes,
        released=released,
        into_buckets=ddp,
    )
    # the optimizer step: every gradient (under DDP, its buckets); the fused AdamW
    # (engine.parallel.data) updates in place, and the gradient norm before it reduces without a
    # gradient-sized copy
    step = MemoryPrediction(
        params=master, grads=buckets or grads_full, optimizer=moments, activations=buffers
    )
    peaks = [backward, step]
    if zero >= 2 and unit == psi:
        # one unit: every unsharded gradient lives until backward ends, then meets the
        # reduce-scatter's input and output in the reduction dtype (and on gloo, which runs
        # it as an all-reduce, that collective's full-size output)
        r = COMPUTE_BYTES[t.reduce_dtype]
        staged = (2 if device == "cpu" else 1) * r * psi + r * psi // dp
        grads = max(accumulated, c * psi) + staged
        peaks.append(replace(base, grads=grads))
    peak = max(peaks, key=lambda x: x.total)
    host = _host_build(cfg, pp_rank, ids, sizes, n_stages, device)
    return MemoryPrediction(peak.params, peak.grads, peak.optimizer, peak.activations, host)


def predict_all(cfg: RunConfig, device: str) -> list[MemoryPrediction]:
    return [predict(cfg, r, device) for r in range(cfg.parallel.n_ranks)]
