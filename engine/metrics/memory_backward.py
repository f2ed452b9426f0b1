"""The backward pass's largest memory moment for ``engine.metrics.memory_model``: the moments
its module docstring lists (each backward's start at the loss head or with a ZeRO-3 gather in
flight, the 1F1B steady state, the stage-by-stage walk when every micro-batch is forwarded
first, a split backward's stash, checkpointing's recomputations), on top of the parameters,
buffers and optimizer state the rank holds throughout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from engine.config import PP_SCHEDULES, RunConfig
from engine.metrics.memory_terms import (
    COMPUTE_BYTES,
    checkpointed_layer_bytes,
    last_recompute,
    layer_activation_bytes,
    loss_head_bytes,
    stream_bytes,
    weight_pass_stash_bytes,
)
from engine.validate import SPLIT_BACKWARD

if TYPE_CHECKING:
    from engine.metrics.memory_model import MemoryPrediction

# schedules that run every micro-batch's forward before the backwards start
_ALL_IN_FLIGHT = {"gpipe", "looped_bfs"}


def in_flight(cfg: RunConfig, n_micro: int, stage_rank: int) -> int:
    p = cfg.parallel
    if p.pp == 1:
        return 1  # gradient accumulation: one micro-batch at a time
    if p.pp_schedule in _ALL_IN_FLIGHT:
        return n_micro
    if PP_SCHEDULES[p.pp_schedule] == "single":
        return min(n_micro, p.pp - stage_rank)  # 1F1B warm-up depth
    return min(n_micro, 2 * p.pp)  # interleaved, zero-bubble and V schedules: a bound


def backward_peak(
    cfg: RunConfig,
    base: MemoryPrediction,
    *,
    accumulated: int,
    stages: list[tuple[int, int]],
    last: bool,
    pp_rank: int,
    gather: int,
    reduced_bytes: Callable[[int], int],
    released: Callable[[int], int],
    into_buckets: bool,
) -> MemoryPrediction:
    """The largest backward moment: ``base`` (parameters, buffers, optimizer state) plus the
    gradients and activations alive then. ``stages``: (layers, parameters, is the first) of
    this rank's stages in the order their backwards start (the later stage first). ``gather``: the
    buffers of a parameter all-gather in flight as a block's backward starts (ZeRO-3).
    ``reduced_bytes(n)``, ``released(n)``: the gradient bytes that remain, and the parameter
    bytes that are freed, once the gradients of a finished stage's ``n`` parameters are
    reduced. ``into_buckets``: each gradient is copied into a bucket ``base`` holds as it is
    computed (DDP), and its own tensor freed."""
    p, t, m = cfg.parallel, cfg.train, cfg.model
    n_micro = t.global_batch // (p.dp * t.micro_batch)
    tokens = t.micro_batch * m.seq_len
    per_layer = layer_activation_bytes(cfg, tokens)
    head = loss_head_bytes(cfg, tokens) if last else 0
    # the logits outlive the loss head's backward: the step's loop holds them until backward
    # is done, and a pipeline schedule keeps every micro-batch's until the step ends, to
    # return them merged
    logits = tokens * m.padded_vocab_size // p.tp * COMPUTE_BYTES[t.precision]
    retained = (n_micro if p.pp > 1 else 1) * logits if last else 0
    head += retained - (logits if last else 0)  # the current one's are in the loss head
    split = p.pp > 1 and p.pp_schedule in SPLIT_BACKWARD
    # what one layer keeps for one micro-batch in flight
    unit = per_layer
    if t.activation_checkpointing != "none":
        unit = checkpointed_layer_bytes(cfg, tokens)
    psi = sum(n for _, n, _ in stages)
    layers = sum(n for n, _, _ in stages)

    # the gradient of a stage's input, one per micro-batch backwarded: the stage keeps it (as
    # its receive buffer's gradient) until the next step starts
    boundary = tokens * m.d_model * stream_bytes(cfg)

    # a moment as (params, grads, activations): the optimizer state is base's throughout, and
    # plain tuples keep the thousands of moments a plan weighs cheap to build
    def moment(units: int, grads_of: int, sent: int, reduced: int = 0) -> tuple[int, int, int]:
        """``units`` layer-micro-batches in flight; the gradients of ``grads_of`` parameters,
        ``reduced`` of them already reduced; ``sent`` input gradients kept."""
        grads = base.grads + accumulated * (grads_of - reduced) // psi
        grads += reduced_bytes(reduced) if accumulated else 0
        acts = base.activations + units * unit + sent * boundary
        params = base.params - released(reduced)
        return params, grads, acts

    deepest = in_flight(cfg, n_micro, pp_rank)
    if deepest < n_micro:
        # steady 1F1B (one stage per rank): each backward is followed by a new forward, so
        # the gradients of earlier micro-batches (accumulated) meet the deepest set in flight
        # until the forwards run out
        sends = 0 if stages[0][2] else 1
        cores = [moment(deepest * layers, 0, 0)]
        # totals are linear in k while the set in flight stays full (up to n_micro - deepest)
        # and again while it drains: the largest is at an end of either piece
        ends = {1, n_micro - deepest, n_micro - deepest + 1, n_micro - 1}
        cores += [
            moment(min(deepest, n_micro - k) * layers, psi, k * sends)
            for k in sorted(k for k in ends if 1 <= k < n_micro)
        ]
    else:
        # every micro-batch is forwarded before the first backward (GPipe, 1F1B's cool-down
        # when warm-up covers them all; the bound taken for interleaved and V schedules):
        # backwards then walk the stages, later stage first, micro-batch by micro-batch; each
        # holds the activations not yet consumed and the gradients of the stages begun
        # (a split backward's stages end their weight passes together, at the step's end:
        # none is reduced before the others)
        cores, units, done, sent = [], n_micro * layers, 0, 0
        for stage_layers, stage_psi, first in stages:
            step = 0 if first else 1
            reduced = 0 if split else done
            # within a stage the totals are linear in k from k = 1 on: its ends suffice
            for k in sorted({0, min(1, n_micro - 1), n_micro - 1}):
                grads_of = done + (stage_psi if k else 0)
                cores.append(moment(units - k * stage_layers, grads_of, sent + k * step, reduced))
            units -= n_micro * stage_layers
            sent += n_micro * step
            done += stage_psi
    if split and p.tp > 1:
        # weight passes wait for bubbles: the micro-batches run in rounds of pp, and each
        # round leaves one micro-batch per layer of the rank whose input pass is done and whose
        # weight pass is not, up to pp of them, after which the steady state runs a weight
        # pass per forward (ZB-V keeps 1F1B's activation bound, Qi et al. 2023). Without
        # tensor parallelism the in-flight bound above (2pp micro-batches' activations, more
        # than the V schedule keeps) already covers the stash: counted again, the V and
        # DualPipeV schedules came out 30% high; tensor parallelism divides the activations
        # that bound over-counts, but not the stash's whole-width gradients (measured on the
        # V schedule at world sizes 2 and 4)
        waiting = min(-(-n_micro // p.pp), p.pp)
        stash = waiting * layers * weight_pass_stash_bytes(cfg, tokens)
        cores = [(pa, g, a + stash) for pa, g, a in cores]
    # each backward starts at the loss head (its temporaries) or, after them, with the first
    # block's parameter gather in flight
    moments = [(pa, g, a + head) for pa, g, a in cores]
    moments += [(pa + gather, g, a + retained) for pa, g, a in cores]
    if t.activation_checkpointing != "none":
        # during each backward a layer is recomputed in full, after its gather has landed; at
        # the last one, the gradients of the stage's later layers exist too (unless the weight
        # pass computes them later)
        late_grads, work = last_recompute(cfg, tokens=tokens, layers=layers, last=last)
        if split or into_buckets:
            late_grads = 0
        ends = [(pa, g, a + work) for pa, g, a in cores]
        pa, g, a = ends[-1]
        ends[-1] = (pa, g + late_grads, a)
        moments += ends
    params, grads, acts = max(moments, key=sum)  # the first of equal totals, as before
    return replace(base, params=params, grads=grads, activations=acts)
