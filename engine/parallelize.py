"""Builds this rank's share of the model for a layout, and the step function that trains it.

Order (torchtitan's): pipeline split -> tensor parallel -> activation checkpointing -> FSDP2
(ZeRO 2/3), all on the meta device; then this rank's shard is allocated and initialised by
parameter name (engine.weights), so every layout starts from the reference's exact weights
while no rank ever holds the whole model; then DDP / replicate, which need real tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from engine import weights
from engine.config import RunConfig
from engine.mesh import Mesh
from engine.metrics.timeline import BACKWARD, FORWARD, Phases
from engine.model import GPT
from engine.parallel import data as dp_wrap
from engine.parallel import pipeline as pp_mod
from engine.parallel.activation import apply_activation_checkpointing
from engine.parallel.tensor import apply_tensor_parallel, loss_context
from engine.precision import Precision
from engine.validate import stages_per_rank

Batch = list[tuple[torch.Tensor, torch.Tensor]]  # (inputs, targets) micro-batches, (B, T) each


def build_model(cfg: RunConfig, device: torch.device) -> GPT:
    """The whole model with the run's initial weights (what every layout's shards add up to)."""
    with torch.device("meta"):
        model = GPT(cfg.model)
    weights.materialize(
        model, weights.param_owners(model), cfg=cfg.model, seed=cfg.train.seed, device=device
    )
    return model


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


class PipelineLoss:
    """The schedule's loss function. ``scale``: fp16 loss scale (the schedule runs backward
    itself, so scaling happens here); ``corrupt`` makes it NaN (debug.nan_at_step)."""

    def __init__(self) -> None:
        self.corrupt = False
        self.scale = 1.0

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = cross_entropy(logits, targets) * self.scale
        return loss * float("nan") if self.corrupt else loss


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def _shard(module: GPT, cfg: RunConfig, mesh: Mesh, device: torch.device) -> nn.Module:
    """Parallelise a meta-device GPT (or stage), then materialise this rank's share of it."""
    owners = weights.param_owners(module)  # names before wrappers rename or replace anything
    if mesh.tp > 1:
        apply_tensor_parallel(module, mesh.sub("tp"), sequence_parallel=cfg.parallel.sp)
    apply_activation_checkpointing(module, cfg.train.activation_checkpointing)

    def wrap(m: nn.Module) -> nn.Module:
        return dp_wrap.apply_data_parallel(
            m,
            cfg.parallel,
            mesh,
            device=device,
            precision=cfg.train.precision,
            reduce_dtype=cfg.train.reduce_dtype,
        )

    # FSDP2 shards meta parameters, so only the shard is ever allocated; DDP and replicate
    # keep every parameter anyway, and DDP broadcasts real values when it wraps
    at_rest_sharded = mesh.dp > 1 and cfg.parallel.zero >= 2
    if at_rest_sharded:
        module = wrap(module)
    weights.materialize(module, owners, cfg=cfg.model, seed=cfg.train.seed, device=device)
    return module if at_rest_sharded else wrap(module)


@dataclass
class Stepper:
    """Runs forward and backward of one optimizer step's micro-batches on this rank."""

    modules: list[nn.Module]  # this rank's model parts (several with virtual pipeline stages)
    precision: Precision
    tp: int
    phases: Phases  # marks forward and backward on the profiler's timeline

    @property
    def has_loss(self) -> bool:
        return True

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]

    def run(self, micro: Batch, *, corrupt: bool) -> torch.Tensor | None:
        model, total = self.modules[0], None
        for i, (x, y) in enumerate(micro):
            last = i == len(micro) - 1
            with dp_wrap.no_sync(model, last_micro_batch=last), loss_context(self.tp):
                with self.phases(FORWARD):
                    with self.precision.autocast():
                        logits = model(x)  # (B, T, vocab)
                    loss = cross_entropy(logits, y) / len(micro)
                    if corrupt:
                        loss = loss * float("nan")
                with self.phases(BACKWARD):
                    self.precision.scale(loss).backward()
            part = _plain(loss.detach())
            total = part if total is None else total + part
        return total


@dataclass
class PipelineStepper(Stepper):
    schedule: object = None
    loss_fn: PipelineLoss | None = None
    first: bool = False
    last: bool = False

    @property
    def has_loss(self) -> bool:
        return self.last

    def run(self, micro: Batch, *, corrupt: bool) -> torch.Tensor | None:
        x = torch.cat([m[0] for m in micro]) if self.first else None
        y = torch.cat([m[1] for m in micro]) if self.last else None
        losses: list[torch.Tensor] = []
        self.loss_fn.corrupt = corrupt
        self.loss_fn.scale = self.precision.loss_scale or 1.0
        # the schedule interleaves forward and backward: its backward passes are told apart on
        # the timeline by the autograd engine's own ranges (metrics.timeline)
        with loss_context(self.tp), self.precision.autocast(), self.phases(FORWARD):
            kwargs = {"target": y, "losses": losses} if self.last else {}
            args = (x,) if self.first else ()
            self.schedule.step(*args, **kwargs)
        if not self.last:
            return None
        losses = [_plain(v.detach()).float() / self.loss_fn.scale for v in losses]
        return torch.stack(losses).mean()


def build_parts(cfg: RunConfig, mesh: Mesh, device: torch.device) -> list[tuple[int, nn.Module]]:
    """(stage id, module) of every model part this rank runs, parallelised and initialised:
    the whole model's share (stage 0 of 1) without pipeline parallelism."""
    torch.manual_seed(cfg.train.seed)  # anything else random starts alike on every rank
    p = cfg.parallel
    if mesh.pp == 1:
        with torch.device("meta"):
            model = GPT(cfg.model)
        return [(0, _shard(model, cfg, mesh, device))]
    n_stages = p.pp * stages_per_rank(p.pp_schedule, p.pp_virtual_stages)
    layers = pp_mod.split_layers(cfg.model, n_stages)
    ids = pp_mod.local_stage_ids(mesh.pp_rank, p.pp, p.pp_schedule, p.pp_virtual_stages)
    parts = []
    for sid in ids:
        stage = pp_mod.stage_module(
            cfg.model, layers[sid], first=sid == 0, last=sid == n_stages - 1
        )
        parts.append((sid, _shard(stage, cfg, mesh, device)))
    return parts


def build(cfg: RunConfig, mesh: Mesh, device: torch.device, precision: Precision) -> Stepper:
    parts = build_parts(cfg, mesh, device)
    if mesh.pp == 1:
        return Stepper([parts[0][1]], precision, mesh.tp, Phases(device))
    p = cfg.parallel
    n_stages = p.pp * stages_per_rank(p.pp_schedule, p.pp_virtual_stages)
    ids = [sid for sid, _ in parts]
    modules = [part for _, part in parts]
    stages = [
        pp_mod.make_stage(
            part, stage_id=sid, n_stages=n_stages, device=device, group=mesh.group("pp")
        )
        for sid, part in parts
    ]
    n_micro = cfg.train.global_batch // (p.dp * cfg.train.micro_batch)
    loss_fn = PipelineLoss()
    schedule = pp_mod.make_schedule(p.pp_schedule, stages, n_microbatches=n_micro, loss_fn=loss_fn)
    return PipelineStepper(
        modules,
        precision,
        mesh.tp,
        Phases(device),
        schedule=schedule,
        loss_fn=loss_fn,
        first=0 in ids,
        last=n_stages - 1 in ids,
    )
