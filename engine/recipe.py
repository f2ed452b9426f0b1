"""What the engine needs to know about a model to lay it out: a recipe.

``engine.parallelize`` asks every model the same questions, in torchtitan's order: build part
k of n (the whole model when n is 1), shard it for tensor parallelism, name the blocks that
activation checkpointing wraps and FSDP2 gathers one at a time, initialise its weights once it
is wrapped, compute the loss. Two recipes answer them:

- ``GPTRecipe``: the built-in GPT, built on the meta device and initialised by parameter name
  (``engine.weights``), so no rank ever holds the whole model.
- ``ModuleRecipe``: a user's ``nn.Module`` instance with its own tensor-parallel plan and
  pipeline split; its weights are the instance's, so every layout starts from them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from engine import weights
from engine.config import ConfigError, ModelConfig
from engine.model import GPT
from engine.parallel import pipeline as pp_mod
from engine.parallel import tensor as tp_mod
from engine.stages import split_layers

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Initialise = Callable[[nn.Module], None]  # fills a (wrapped) part's tensors on its device
Units = list[tuple[nn.Module, str]]  # (parent, attribute name) of each block


def token_cross_entropy(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (..., vocab) logits against token ids of the leading shape."""
    return F.cross_entropy(output.float().flatten(0, -2), targets.flatten())


@runtime_checkable
class Recipe(Protocol):
    # the shape the analytic figures (FLOPs, memory model, comm volume) describe; None when
    # the engine has no such model of the architecture (a user's module)
    model_config: ModelConfig | None

    def part(self, stage: int, n_stages: int) -> nn.Module:
        """Pipeline stage ``stage`` of ``n_stages``, not yet parallelised."""

    def prepare(self, part: nn.Module, device: torch.device) -> Initialise:
        """Called before any wrapping; returns what initialises ``part`` once wrapped."""

    def tensor_parallel(self, part: nn.Module, mesh: DeviceMesh, *, sequence_parallel: bool):
        """Shard ``part`` in place over the tensor-parallel mesh."""

    def blocks(self, part: nn.Module) -> Units:
        """The activation-checkpointing and FSDP2 units of ``part``."""

    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def loss_context(self, tp: int) -> contextlib.AbstractContextManager:
        """Entered around forward and backward (the GPT's loss on vocabulary shards)."""


class GPTRecipe:
    """The built-in GPT of ``model_config``, initial weights a function of (seed, name)."""

    def __init__(self, model_config: ModelConfig, *, seed: int) -> None:
        self.model_config, self.seed = model_config, seed

    def part(self, stage: int, n_stages: int) -> nn.Module:
        if n_stages == 1:
            with torch.device("meta"):
                return GPT(self.model_config)
        layers = split_layers(self.model_config, n_stages)[stage]
        return pp_mod.stage_module(
            self.model_config, layers, first=stage == 0, last=stage == n_stages - 1
        )

    def prepare(self, part: nn.Module, device: torch.device) -> Initialise:
        owners = weights.param_owners(part)  # names before wrappers rename or replace anything

        def initialise(wrapped: nn.Module) -> None:
            weights.materialize(
                wrapped, owners, cfg=self.model_config, seed=self.seed, device=device
            )

        return initialise

    def tensor_parallel(self, part: nn.Module, mesh: DeviceMesh, *, sequence_parallel: bool):
        tp_mod.apply_tensor_parallel(part, mesh, sequence_parallel=sequence_parallel)

    def blocks(self, part: nn.Module) -> Units:
        return [(part.layers, layer_id) for layer_id in part.layers]

    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return token_cross_entropy(output, targets)  # (B, T, vocab) logits

    def loss_context(self, tp: int) -> contextlib.AbstractContextManager:
        return tp_mod.loss_context(tp)


TpPlan = dict | Callable[..., dict]  # a parallelize_module plan, or part -> plan (see below)
PpSplit = Callable[[nn.Module, int, int], nn.Module]


class ModuleRecipe:
    """A user's model instance.

    ``tp_plan``: a ``parallelize_module`` plan (module name -> ParallelStyle) applied to each
    part, or a function ``(part, *, sequence_parallel) -> plan`` (needed for sequence
    parallelism, and when the pipeline parts differ). ``pp_split(model, stage, n_stages)``:
    the stage's module, whose output feeds the next stage's forward; under the interleaved
    and V-shaped schedules it is called for each of this rank's stages. ``units``: the blocks
    FSDP2 gathers one at a time and activation checkpointing wraps.
    """

    model_config = None

    def __init__(
        self,
        model: nn.Module,
        *,
        loss_fn: LossFn = token_cross_entropy,
        tp_plan: TpPlan | None = None,
        pp_split: PpSplit | None = None,
        units: list[nn.Module] | None = None,
    ) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.tp_plan, self.pp_split = tp_plan, pp_split
        self.units = list(units or [])

    @property
    def name(self) -> str:
        return type(self.model).__name__

    def part(self, stage: int, n_stages: int) -> nn.Module:
        if n_stages == 1:
            return self.model
        if self.pp_split is None:
            raise ConfigError(
                f"`parallel.pp` > 1 cuts the model into {n_stages} stages, but no `pp_split` "
                "was given; pass pp_split(model, stage, n_stages) -> the stage's module."
            )
        return self.pp_split(self.model, stage, n_stages)

    def prepare(self, part: nn.Module, device: torch.device) -> Initialise:
        part.to(device)  # real weights already: tensor parallelism shards them from here
        return lambda wrapped: None

    def tensor_parallel(self, part: nn.Module, mesh: DeviceMesh, *, sequence_parallel: bool):
        if not self.tp_plan:
            raise ConfigError(
                "`parallel.tp` > 1 needs `tp_plan` for this model's layers (module name -> "
                "ParallelStyle, as for parallelize_module)."
            )
        if callable(self.tp_plan):
            plan = self.tp_plan(part, sequence_parallel=sequence_parallel)
        elif sequence_parallel:
            raise ConfigError(
                "`parallel.sp=true` changes the plan's layouts; pass `tp_plan` as a function "
                "(part, *, sequence_parallel) -> plan."
            )
        else:
            plan = self.tp_plan
        from torch.distributed.tensor.parallel import parallelize_module

        parallelize_module(part, mesh, plan)

    def blocks(self, part: nn.Module) -> Units:
        # only the units inside this part (a pipeline stage holds some of them)
        parents = {
            id(child): (parent, name)
            for parent in part.modules()
            for name, child in parent.named_children()
        }
        return [parents[id(u)] for u in self.units if id(u) in parents]

    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(output, targets)

    def loss_context(self, tp: int) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()
