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
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from engine.config import PP_SCHEDULE_CLASSES, PP_SCHEDULES, ModelConfig
from engine.model import GPT
from engine.validate import missing_schedule

if TYPE_CHECKING:
    from torch.distributed.pipelining import PipelineStage


@dataclass(frozen=True)
class ScheduleSpec:
    cls: type | None  # None: this torch does not have the schedule (see PP_SCHEDULE_SINCE)
    placement: str  # "single" (one stage per rank), "loop" or "v"


def schedule_table(module: ModuleType) -> dict[str, ScheduleSpec]:
    """Each schedule's class, looked up by name in ``module`` (torch's schedules), so that a
    torch without the newer ones still imports this; placements and names are declared once,
    torch-free, in engine.config."""
    return {
        name: ScheduleSpec(getattr(module, PP_SCHEDULE_CLASSES[name], None), placement)
        for name, placement in PP_SCHEDULES.items()
    }


def __getattr__(name: str) -> object:
    """``SCHEDULES`` and ``AVAILABLE``, built on first use: torch.distributed.pipelining (and
    dynamo, which it imports) costs more than half a second per rank, and only pipeline-parallel
    runs need it (PEP 562)."""
    if name not in ("SCHEDULES", "AVAILABLE"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from torch.distributed.pipelining import schedules

    table = globals().setdefault("SCHEDULES", schedule_table(schedules))
    globals()["AVAILABLE"] = [name for name, spec in table.items() if spec.cls is not None]
    return globals()[name]


def _schedules() -> dict[str, ScheduleSpec]:
    return globals().get("SCHEDULES") or __getattr__("SCHEDULES")


def schedule_class(schedule: str) -> type:
    """The torch class of ``schedule``; ConfigError naming the torch release that has it when
    this torch does not (engine.validate refuses such a config before launch)."""
    cls = _schedules()[schedule].cls
    if cls is None:
        raise missing_schedule(schedule, torch.__version__)
    return cls


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
    from torch.distributed.pipelining import PipelineStage

    return PipelineStage(module, stage_id, n_stages, device, group=group)


def make_schedule(schedule: str, stages: list[PipelineStage], *, n_microbatches: int, loss_fn):
    arg = stages[0] if _schedules()[schedule].placement == "single" else stages
    cls = schedule_class(schedule)
    return cls(arg, n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=True)
