"""What one optimizer step of a layout asks of the hardware, as seconds at the cluster's
datasheet rates: the features the step-time model weighs (``tuner.perf.model``).

Each feature is a time the step would take if that part ran at the hardware's full rate and
nothing overlapped; the model's coefficients say how far from that each part runs (matmul
efficiency, overlap of communication with compute, per-call overheads). Keeping the step
time linear in the coefficients makes calibration an ordinary least-squares fit.

The step of the slowest pipeline rank, in units of one micro-batch's forward and backward
through that rank's stages (t), lasts (m + B)·t with m micro-batches and B the schedule's
bubble in those units (``BUBBLE``; ``span`` where ranks share cores); data-parallel
communication, the optimizer step and the per-step constant come on top.

Features counted in calls (layer invocations, pipeline hops, parameter tensors, steps) are
host work; where ranks outnumber cores (``Cluster.time_share``) each rank gets that share of
a core, so they stretch by it. Rates (FLOP/s, bytes/s) are measured with every rank busy and
carry the sharing already.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import RunConfig
from engine.metrics.bandwidth import bus_factor
from engine.metrics.volumes import Collective, collectives, n_micro, rank_params
from engine.shapes import stage_tensors
from engine.stages import local_stage_ids, n_stages, representative_ranks, stage_sizes
from tuner.perf.cluster import Cluster, group_strides

_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# AdamW touches, per parameter it updates: reads of the parameter, its gradient and two
# moments, writes of the parameter and both moments, in fp32
OPTIMIZER_BYTES = 7 * 4

FEATURES = (
    "matmul",  # matmul FLOPs / peak FLOP/s
    "matmul_small",  # the same over the matrices' smaller side: small matrices run slower
    # low-precision matmul FLOPs / the fp32 peak: autocast's casts and the low-precision
    # kernels' shortfall on training shapes, which the low-precision peak alone misses
    "matmul_lowp",
    "elementwise",  # activation bytes read and written by norms, activations, softmax / HBM
    "calls",  # layer invocations (forward and backward): launch and interpreter overhead
    "tp_calls",  # invocations of tensor-parallel layers: DTensor dispatch, collectives' waits
    "comm_tp",  # tensor-parallel collectives: latency + bus bytes / link bandwidth
    "comm_pp",  # pipeline sends
    "pp_hops",  # pipeline sends per step: each waits for its peer to reach it
    "dp_calls",  # data-parallel collective calls: FSDP's per-unit copies and hooks, DDP's buckets
    "comm_dp0",  # data-parallel collectives, by ZeRO stage (each overlaps differently)
    "comm_dp1",
    "comm_dp2",
    "comm_dp3",
    "optimizer",  # optimizer-state bytes / HBM bandwidth
    "opt_tensors",  # parameter tensors the optimizer updates one by one (plain tensors)
    "opt_dtensors",  # ... as DTensors (ZeRO-2/3 shards, tensor-parallel weights): dispatch
    "step",  # 1 per step: what does not scale with the model (seconds)
)

# pipeline bubble per schedule, in micro-batch times of one rank: (pp - 1) for GPipe and
# 1F1B (Narayanan et al. 2021), divided by the stages per rank when interleaved; the
# zero-bubble schedules fill most of it with the split weight-gradient pass (Qi et al. 2023:
# ZB-H1 about a third of 1F1B's; ZB-V and DualPipeV close to none with enough micro-batches)
BUBBLE = {
    "gpipe": lambda pp, v: pp - 1,
    "1f1b": lambda pp, v: pp - 1,
    "interleaved_1f1b": lambda pp, v: (pp - 1) / v,
    "looped_bfs": lambda pp, v: (pp - 1) / v,
    "interleaved_zero_bubble": lambda pp, v: (pp - 1) / (3 * v),
    "zbv_zero_bubble": lambda pp, v: (pp - 1) / 6,
    "dualpipev": lambda pp, v: (pp - 1) / 6,
}


def bubble(schedule: str, pp: int, v: int, micro: int) -> float:
    """The schedule's bubble, but never less than one micro-batch's own path through every
    stage allows: with m micro-batches the step lasts at least pp·t, so B >= pp - m (a
    zero-bubble schedule with one micro-batch is as sequential as GPipe)."""
    if pp == 1:
        return 0.0
    return max(BUBBLE[schedule](pp, v), pp - micro)


def span(micro: int, bubble_t: float, share: float) -> float:
    """How many micro-batch times of one busy rank a pipeline rank's step lasts.

    With a core (or device) per rank that is m + B. Where ranks take turns on the cores
    (``share`` > 1), the rates are measured with every rank busy, and a rank idle in the bubble
    leaves its core to the others: the fill and drain run faster than the steady part, and the
    step lasts no more than the work itself, m busy-rank times, unless m + B at full speed is
    longer (a pipeline cannot finish before one micro-batch has crossed every stage)."""
    return max(micro, (micro + bubble_t) / share) if share > 1 else micro + bubble_t


def step_span(cfg: RunConfig, cluster: Cluster) -> float:
    """``span`` of this layout's step on ``cluster``: its micro-batch times of one rank."""
    p, m = cfg.parallel, n_micro(cfg)
    return span(m, bubble(p.pp_schedule, p.pp, p.pp_virtual_stages, m), cluster.time_share)


@dataclass(frozen=True)
class RankLoad:
    """What one pipeline rank does per micro-batch (forward + backward, recompute included)."""

    pp_rank: int
    flops: float
    small_flops: float  # flops / smaller matrix side
    lowp_flops: float  # flops at the fp32 peak, under a low precision (0 in fp32)
    elem_bytes: float
    calls: float
    tp_calls: float
    comm_tp: float  # seconds per micro-batch at link rate
    comm_pp: float
    hops: float  # pipeline sends per micro-batch
    tensors: int  # parameter tensors held


def _op_flops(cfg: RunConfig, layers: int, *, head: bool) -> float:
    """Forward FLOPs per token of ``layers`` blocks (and the head) on one tensor-parallel rank:
    2 per multiply-add over the projections and MLP, and PaLM's attention-score term."""
    m, tp = cfg.model, cfg.parallel.tp
    mlp_mats = 3 if m.mlp == "swiglu" else 2
    block = 2 * (4 * m.d_model**2 + mlp_mats * m.d_model * m.d_ff) + 4 * m.seq_len * m.d_model
    out = layers * block / tp
    if head:
        out += 2 * m.padded_vocab_size * m.d_model / tp
    return out


def _rank_load(cfg: RunConfig, cluster: Cluster, pp_rank: int, peak: float) -> RankLoad:
    p, t, m = cfg.parallel, cfg.train, cfg.model
    total = n_stages(p)
    if total == 1:
        layers, head = m.n_layers, True
        stages = 1
    else:
        sizes = stage_sizes(m, total)
        ids = local_stage_ids(pp_rank, p.pp, p.pp_schedule, p.pp_virtual_stages)
        layers, head, stages = sum(sizes[s] for s in ids), total - 1 in ids, len(ids)
    tokens = t.micro_batch * m.seq_len
    fwd = _op_flops(cfg, layers, head=head) * tokens
    recompute = {"none": 0.0, "selective": 0.0, "full": 1.0}[t.activation_checkpointing]
    blocks_fwd = _op_flops(cfg, layers, head=False) * tokens
    flops = 3 * fwd + recompute * blocks_fwd
    side = min(tokens, m.d_model // p.tp)
    act = _BYTES[t.precision]
    seq_share = p.tp if p.sp else 1
    per_token = (6 * m.d_model / seq_share + 2 * m.d_ff / p.tp) * act
    per_token += 2 * m.seq_len * (m.n_heads // p.tp) * act  # attention probabilities
    elem = 3 * layers * tokens * per_token  # forward, and about twice that in backward
    if t.activation_checkpointing != "none":
        elem *= 4 / 3  # the blocks' element-wise forward runs again
    strides = group_strides(p.tp, p.dp)
    micro = n_micro(cfg)
    own = collectives(cfg, pp_rank, backend=cluster.backend)
    sends = [c for c in own if c.kind == "send"]
    # forward, backward, and the blocks' forward again under full checkpointing
    calls = (3 if t.activation_checkpointing == "full" else 2) * layers + 2 * stages
    lowp = t.precision != "fp32"
    return RankLoad(
        pp_rank,
        flops / peak,
        flops / peak / max(side, 1),
        flops / cluster.peak_flops("fp32") if lowp else 0.0,
        elem / (cluster.hbm_gbps * 1e9),
        calls,
        calls if p.tp > 1 else 0,
        _comm_seconds([c for c in own if c.group == "tp"], cluster, p.tp, strides["tp"]) / micro,
        _comm_seconds(sends, cluster, p.pp, strides["pp"]) / micro,
        sum(c.count for c in sends) / micro,
        sum(stage_tensors(m, layers=n, first=f, last=la) for n, f, la in _stages_of(cfg, pp_rank)),
    )


def _stages_of(cfg: RunConfig, pp_rank: int) -> list[tuple[int, bool, bool]]:
    """(layers, first, last) of each stage pipeline rank ``pp_rank`` runs."""
    p, m = cfg.parallel, cfg.model
    total = n_stages(p)
    if total == 1:
        return [(m.n_layers, True, True)]
    sizes = stage_sizes(m, total)
    ids = local_stage_ids(pp_rank, p.pp, p.pp_schedule, p.pp_virtual_stages)
    return [(sizes[s], s == 0, s == total - 1) for s in ids]


def _comm_seconds(items: list[Collective], cluster: Cluster, size: int, stride: int) -> float:
    """Latency + bus bytes / link bandwidth (nccl-tests' bus conventions), at datasheet rates."""
    if not items or size == 1:
        return 0.0
    link = cluster.link(size, stride)
    total = 0.0
    for c in items:
        whole = c.bytes * (size if c.kind == "all_gather" else 1)  # the whole array
        total += c.count * link.latency_s + bus_factor(c.kind, size) * whole / (link.gbps * 1e9)
    return total


def features(cfg: RunConfig, cluster: Cluster, *, slowest: int | None = None) -> dict[str, float]:
    """The step's features (FEATURES), for its slowest pipeline rank (``slowest``: that rank,
    when known; else the one with the most work at datasheet rates)."""
    p, t = cfg.parallel, cfg.train
    peak = cluster.peak_flops(t.precision)
    ranks = [slowest] if slowest is not None else representative_ranks(cfg.model, p)
    loads = [_rank_load(cfg, cluster, r, peak) for r in ranks]
    load = max(loads, key=lambda x: x.flops + x.elem_bytes + x.comm_tp + x.comm_pp)
    share = cluster.time_share
    scale = step_span(cfg, cluster)
    out = dict.fromkeys(FEATURES, 0.0)
    out.update(
        matmul=scale * load.flops,
        matmul_small=scale * load.small_flops,
        matmul_lowp=scale * load.lowp_flops,
        elementwise=scale * load.elem_bytes,
        calls=scale * load.calls * share,
        tp_calls=scale * load.tp_calls * share,
        comm_tp=scale * load.comm_tp,
        comm_pp=scale * load.comm_pp,
        pp_hops=scale * load.hops * share,
        step=share,
    )
    strides = group_strides(p.tp, p.dp)
    own = collectives(cfg, load.pp_rank, backend=cluster.backend)
    dp_items = [c for c in own if c.group == "dp"]
    out[f"comm_dp{p.zero}"] = _comm_seconds(dp_items, cluster, p.dp, strides["dp"])
    out["dp_calls"] = sum(c.count for c in dp_items) * share
    psi = rank_params(cfg, load.pp_rank)
    shards = p.dp if p.zero >= 1 else 1
    out["optimizer"] = OPTIMIZER_BYTES * psi / shards / (cluster.hbm_gbps * 1e9)
    dtensors = p.zero >= 2 or p.tp > 1
    out["opt_dtensors" if dtensors else "opt_tensors"] = load.tensors * share
    return out
