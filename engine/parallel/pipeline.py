"""Pipeline parallelism through torch.distributed.pipelining.

The model is cut into ``pp * virtual_stages`` stages of consecutive blocks, balanced by FLOPs
per token: a block counts 1, the output head counts its matmul's share (vocab * d_model against
a block's weights), the embedding lookup counts 0. Each rank holds one stage, or several for
the interleaved ("loop": stages r, r+pp, ...) and V-shaped ("v": stages r and 2pp-1-r)
schedules. Micro-batches are the data-parallel rank's share of the global batch, split by
``train.micro_batch``; gradients are averaged over them (``scale_grads``), as in the reference.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import (
    Schedule1F1B,
    ScheduleDualPipeV,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
    ScheduleLoopedBFS,
    ScheduleZBVZeroBubble,
)

from engine.config import PP_SCHEDULES, ModelConfig
from engine.model import GPT


@dataclass(frozen=True)
class ScheduleSpec:
    cls: type
    placement: str  # "single" (one stage per rank), "loop" or "v"


_CLASSES: dict[str, type] = {
    "gpipe": ScheduleGPipe,
    "1f1b": Schedule1F1B,
    "interleaved_1f1b": ScheduleInterleaved1F1B,
    "looped_bfs": ScheduleLoopedBFS,
    "interleaved_zero_bubble": ScheduleInterleavedZeroBubble,
    "zbv_zero_bubble": ScheduleZBVZeroBubble,
    "dualpipev": ScheduleDualPipeV,
}
# the placements are declared once, torch-free, in engine.config
SCHEDULES: dict[str, ScheduleSpec] = {
    name: ScheduleSpec(_CLASSES[name], placement) for name, placement in PP_SCHEDULES.items()
}


def stage_costs(cfg: ModelConfig) -> tuple[float, float]:
    """(block, head) cost in FLOPs-per-token units of one block."""
    block = 4 * cfg.d_model**2 + (3 if cfg.mlp == "swiglu" else 2) * cfg.d_model * cfg.d_ff
    block += 2 * cfg.seq_len * cfg.d_model  # attention scores: 2·T·d per token (PaLM's 12LHQT / 6)
    return 1.0, cfg.padded_vocab_size * cfg.d_model / block  # the head computes padded rows too


def split_layers(cfg: ModelConfig, n_stages: int) -> list[list[int]]:
    """Consecutive layer ranges per stage, minimising the most loaded stage (head included)."""
    _, head = stage_costs(cfg)
    n = cfg.n_layers

    # dynamic programming over (first unplaced layer, stages left): the partition with the
    # smallest most-loaded stage, ties broken by the smallest sum of squared loads (evenness)
    @functools.cache
    def solve(start: int, stages_left: int) -> tuple[float, float, tuple[int, ...]]:
        if stages_left == 1:
            load = (n - start) + head
            return load, load * load, (n,)
        best = (float("inf"), float("inf"), ())
        for end in range(start + 1, n - stages_left + 2):
            rest_max, rest_sq, cuts = solve(end, stages_left - 1)
            here = end - start
            candidate = (max(here, rest_max), here * here + rest_sq, (end, *cuts))
            best = min(best, candidate)
        return best

    _, _, cuts = solve(0, n_stages)
    bounds = [0, *cuts]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(n_stages)]


def local_stage_ids(pp_rank: int, pp: int, schedule: str, virtual_stages: int) -> list[int]:
    placement = SCHEDULES[schedule].placement
    if placement == "single":
        return [pp_rank]
    if placement == "v":
        return [pp_rank, 2 * pp - 1 - pp_rank]
    return [pp_rank + k * pp for k in range(virtual_stages)]


def stage_module(cfg: ModelConfig, layers: list[int], *, first: bool, last: bool) -> GPT:
    """One stage's parts of the GPT, on the meta device (layer names keep their global index):
    a rank never holds, not even briefly, the stages it does not run. ``engine.weights``
    materialises it."""
    with torch.device("meta"):
        stage = GPT(cfg)
    for layer_id in list(stage.layers.keys()):
        if int(layer_id) not in layers:
            del stage.layers[layer_id]
    if not first:
        stage.tok_emb, stage.pos_emb = None, None
    if not last:
        stage.norm, stage.head = None, None
    return stage


def make_stage(module: GPT, *, stage_id: int, n_stages: int, device, group) -> PipelineStage:
    return PipelineStage(module, stage_id, n_stages, device, group=group)


def make_schedule(schedule: str, stages: list[PipelineStage], *, n_microbatches: int, loss_fn):
    spec = SCHEDULES[schedule]
    arg = stages[0] if spec.placement == "single" else stages
    return spec.cls(arg, n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=True)
