"""One training step of this rank, the same for the runner's loop and for ``engine.Engine``.

``TrainStep.build`` lays the model out (``engine.parallelize``) and makes its optimizer;
``backward`` runs forward and backward over a step's micro-batches; ``update`` unscales the
gradients (fp16), takes their global norm, clips, steps and zeroes them, and keeps count of the
steps fp16 loss scaling skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from engine import parallelize
from engine.config import RunConfig
from engine.mesh import Mesh, build_mesh
from engine.metrics.timeline import OPTIMIZER
from engine.parallel import data as dp_wrap
from engine.parallel.grad_norm import clip_, total_norm
from engine.precision import Precision
from engine.recipe import Recipe
from engine.runtime import DistContext

# fp16 loss scaling recovers from an overflow by skipping the step; this many skips in a row
# means the run has diverged rather than overflowed once.
MAX_CONSECUTIVE_SKIPS = 10


class Diverged(RuntimeError):
    """The loss or gradients became NaN/inf and loss scaling could not recover."""


@dataclass(frozen=True)
class Update:
    """What one optimizer step did."""

    norm: torch.Tensor  # global gradient norm before clipping, over every split of the grads
    applied: bool  # False: fp16 loss scaling skipped the step (inf/NaN gradients)
    consecutive_skips: int
    loss_scaling: bool

    @cached_property
    def norm_value(self) -> float:
        """The norm on the host (read once per step)."""
        return self.norm.item()

    @property
    def diverged(self) -> bool:
        # the norm is global, so every rank reaches the same verdict on the same step without
        # another collective; with loss scaling a non-finite norm is an overflow, skipped
        if self.loss_scaling:
            return self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS
        return not math.isfinite(self.norm_value)


class TrainStep:
    def __init__(
        self,
        stepper: parallelize.Stepper,
        optimizer: torch.optim.Optimizer,
        *,
        mesh: Mesh,
        device: torch.device,
        grad_clip: float,
    ) -> None:
        self.stepper, self.optimizer = stepper, optimizer
        self.mesh, self.device, self.grad_clip = mesh, device, grad_clip
        self.precision: Precision = stepper.precision
        self.params = stepper.parameters()
        self.consecutive_skips = 0

    @classmethod
    def build(cls, cfg: RunConfig, ctx: DistContext, recipe: Recipe | None = None) -> TrainStep:
        """This rank's share of ``recipe``'s model (default: the run's GPT), its optimizer."""
        t, device = cfg.train, ctx.device
        mesh = build_mesh(cfg.parallel, ctx)
        precision = Precision(t.precision, device, growth_interval=t.loss_scale_growth_interval)
        stepper = parallelize.build(cfg, mesh, device, precision, recipe)
        optimizer = dp_wrap.make_optimizer(
            stepper.parameters(),
            cfg.parallel,
            mesh,
            lr=t.lr,
            betas=t.betas,
            weight_decay=t.weight_decay,
        )
        return cls(stepper, optimizer, mesh=mesh, device=device, grad_clip=t.grad_clip)

    @property
    def modules(self) -> list[torch.nn.Module]:
        return self.stepper.modules

    def backward(self, micro: parallelize.Batch, *, corrupt: bool = False) -> torch.Tensor | None:
        """Forward and backward of the step's micro-batches: this rank's mean loss over them
        (None on pipeline stages without the loss). ``corrupt``: make it NaN (tests)."""
        return self.stepper.run(micro, corrupt=corrupt)

    def update(self) -> Update:
        with self.stepper.phases(OPTIMIZER):
            self.precision.unscale(self.optimizer)
            norm = total_norm(self.params, self.mesh, self.device)
            clip_(self.params, norm, self.grad_clip)
            applied = self.precision.step(self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
        self.consecutive_skips = 0 if applied else self.consecutive_skips + 1
        return Update(norm, applied, self.consecutive_skips, self.precision.scaler is not None)
