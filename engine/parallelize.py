"""Builds this rank's share of the model for a layout, and the step function that trains it.

Order (torchtitan's): pipeline split -> tensor parallel -> activation checkpointing ->
torch.compile -> FSDP2 (ZeRO 2/3); then this rank's shard is initialised; then DDP / replicate,
which need real tensors. The model comes from a recipe (engine.recipe): the built-in GPT is
built on the meta device and initialised by parameter name (engine.weights), so every layout
starts from the reference's exact weights while no rank ever holds the whole model; a user's
module brings its own weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.config import RunConfig
from engine.mesh import Mesh
from engine.metrics.timeline import BACKWARD, FORWARD, Phases
from engine.model import GPT
from engine.parallel import data as dp_wrap
from engine.parallel import pipeline as pp_mod
from engine.parallel.activation import checkpoint_module
from engine.parallel.compile import apply_compile
from engine.parallel.tensor import full_tensor_of, loss_context
from engine.precision import Precision
from engine.recipe import GPTRecipe, LossFn, Recipe, token_cross_entropy
from engine.stages import local_stage_ids, n_stages

Batch = list[tuple[torch.Tensor, torch.Tensor]]  # (inputs, targets) micro-batches, (B, T) each


def gpt_recipe(cfg: RunConfig) -> GPTRecipe:
    """The run's built-in GPT, initialised from ``train.seed``."""
    return GPTRecipe(cfg.model, seed=cfg.train.seed)


def build_model(cfg: RunConfig, device: torch.device) -> GPT:
    """The whole model with the run's initial weights (what every layout's shards add up to)."""
    recipe = gpt_recipe(cfg)
    model = recipe.part(0, 1)
    recipe.prepare(model, device)(model)
    return model


class PipelineLoss:
    """The schedule's loss function. ``scale``: fp16 loss scale (the schedule runs backward
    itself, so scaling happens here); ``corrupt`` makes it NaN (debug.nan_at_step)."""

    def __init__(self, loss_fn: LossFn = token_cross_entropy) -> None:
        self.loss_fn = loss_fn
        self.corrupt = False
        self.scale = 1.0

    def __call__(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(output, targets) * self.scale
        return loss * float("nan") if self.corrupt else loss


def _checkpoint_blocks(part: nn.Module, recipe: Recipe, mode: str) -> list[nn.Module]:
    """Wrap the recipe's blocks of ``part`` for activation checkpointing, in place; returns
    the blocks as they now are (FSDP2's units)."""
    units = []
    for parent, name in recipe.blocks(part):
        block = checkpoint_module(getattr(parent, name), mode)
        setattr(parent, name, block)
        units.append(block)
    return units


def _shard(
    part: nn.Module, recipe: Recipe, cfg: RunConfig, mesh: Mesh, device: torch.device
) -> nn.Module:
    """Parallelise a model part (meta or real), then initialise this rank's share of it."""
    initialise = recipe.prepare(part, device)
    if mesh.tp > 1:
        recipe.tensor_parallel(part, mesh.sub("tp"), sequence_parallel=cfg.parallel.sp)
    units = _checkpoint_blocks(part, recipe, cfg.train.activation_checkpointing)
    apply_compile(part, recipe, cfg.train.compile)  # in place: the units stay the same modules

    def wrap(m: nn.Module) -> nn.Module:
        return dp_wrap.apply_data_parallel(
            m,
            cfg.parallel,
            mesh,
            device=device,
            precision=cfg.train.precision,
            reduce_dtype=cfg.train.reduce_dtype,
            units=units,
        )

    # FSDP2 shards meta parameters, so only the shard is ever allocated; DDP and replicate
    # keep every parameter anyway, and DDP broadcasts real values when it wraps
    at_rest_sharded = mesh.dp > 1 and cfg.parallel.zero >= 2
    if at_rest_sharded:
        part = wrap(part)
    initialise(part)
    return part if at_rest_sharded else wrap(part)


@dataclass
class Stepper:
    """Runs forward and backward of one optimizer step's micro-batches on this rank."""

    modules: list[nn.Module]  # this rank's model parts (several with virtual pipeline stages)
    precision: Precision
    tp: int
    phases: Phases  # marks forward and backward on the profiler's timeline
    loss_fn: LossFn = token_cross_entropy
    # entered around forward and backward: the GPT's loss on vocabulary shards under tp
    loss_context: Callable = field(default=loss_context)

    @property
    def has_loss(self) -> bool:
        return True

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]

    def run(self, micro: Batch, *, corrupt: bool) -> torch.Tensor | None:
        model, total = self.modules[0], None
        for i, (x, y) in enumerate(micro):
            last = i == len(micro) - 1
            with dp_wrap.no_sync(model, last_micro_batch=last), self.loss_context(self.tp):
                with self.phases(FORWARD):
                    with self.precision.autocast():
                        out = model(x)  # the GPT's: (B, T, vocab) logits
                    loss = self.loss_fn(out, y) / len(micro)
                    if corrupt:
                        loss = loss * float("nan")
                with self.phases(BACKWARD):
                    self.precision.scale(loss).backward()
            part = full_tensor_of(loss.detach())
            total = part if total is None else total + part
        return total


@dataclass
class PipelineStepper(Stepper):
    schedule: object = None
    pipeline_loss: PipelineLoss | None = None
    first: bool = False
    last: bool = False

    @property
    def has_loss(self) -> bool:
        return self.last

    def run(self, micro: Batch, *, corrupt: bool) -> torch.Tensor | None:
        x = torch.cat([m[0] for m in micro]) if self.first else None
        y = torch.cat([m[1] for m in micro]) if self.last else None
        losses: list[torch.Tensor] = []
        self.pipeline_loss.corrupt = corrupt
        self.pipeline_loss.scale = self.precision.loss_scale or 1.0
        # the schedule interleaves forward and backward: its backward passes are told apart on
        # the timeline by the autograd engine's own ranges (metrics.timeline)
        with self.loss_context(self.tp), self.precision.autocast(), self.phases(FORWARD):
            kwargs = {"target": y, "losses": losses} if self.last else {}
            args = (x,) if self.first else ()
            self.schedule.step(*args, **kwargs)
        if not self.last:
            return None
        losses = [full_tensor_of(v.detach()).float() / self.pipeline_loss.scale for v in losses]
        return torch.stack(losses).mean()


def build_parts(
    cfg: RunConfig, mesh: Mesh, device: torch.device, recipe: Recipe | None = None
) -> list[tuple[int, nn.Module]]:
    """(stage id, module) of every model part this rank runs, parallelised and initialised:
    the whole model's share (stage 0 of 1) without pipeline parallelism. ``recipe``: the
    model (default: the run's GPT)."""
    recipe = recipe or gpt_recipe(cfg)
    torch.manual_seed(cfg.train.seed)  # anything else random starts alike on every rank
    p, total = cfg.parallel, n_stages(cfg.parallel)
    ids = [0]
    if mesh.pp > 1:
        ids = local_stage_ids(mesh.pp_rank, p.pp, p.pp_schedule, p.pp_virtual_stages)
    return [(sid, _shard(recipe.part(sid, total), recipe, cfg, mesh, device)) for sid in ids]


def build(
    cfg: RunConfig,
    mesh: Mesh,
    device: torch.device,
    precision: Precision,
    recipe: Recipe | None = None,
) -> Stepper:
    recipe = recipe or gpt_recipe(cfg)
    parts = build_parts(cfg, mesh, device, recipe)
    modules = [part for _, part in parts]
    loss = {"loss_fn": recipe.loss, "loss_context": recipe.loss_context}
    if mesh.pp == 1:
        return Stepper(modules, precision, mesh.tp, Phases(device), **loss)
    p, total = cfg.parallel, n_stages(cfg.parallel)
    ids = [sid for sid, _ in parts]
    stages = [
        pp_mod.make_stage(part, stage_id=sid, n_stages=total, device=device, group=mesh.group("pp"))
        for sid, part in parts
    ]
    n_micro = cfg.train.global_batch // (p.dp * cfg.train.micro_batch)
    pipeline_loss = PipelineLoss(recipe.loss)
    schedule = pp_mod.make_schedule(
        p.pp_schedule, stages, n_microbatches=n_micro, loss_fn=pipeline_loss
    )
    return PipelineStepper(
        modules,
        precision,
        mesh.tp,
        Phases(device),
        **loss,
        schedule=schedule,
        pipeline_loss=pipeline_loss,
        first=0 in ids,
        last=total - 1 in ids,
    )
