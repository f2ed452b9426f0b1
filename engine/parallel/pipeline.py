"""Pipeline parallelism through torch.distributed.pipelining.

The model is cut into ``pp * virtual_stages`` stages of consecutive blocks, balanced by FLOPs
per token: a block counts 1, the output head counts its matmul's share (vocab * d_model against
a block's weights), the embedding lookup counts 0. Each rank holds one stage, or several for
the interleaved ("loop": stages r, r+pp, ...) and V-shaped ("v": stages r and 2pp-1-r)
schedules. Micro-batches are the data-parallel rank's share of the global batch, split by
``train.micro_batch``; gradients are averaged over them (``scale_grads``), as in the reference.
"""

from __future__ import annotations

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

# where the layers go is plain arithmetic, shared with the planner and the memory model
from engine.stages import local_stage_ids, split_layers, stage_costs  # noqa: F401


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
