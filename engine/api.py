"""Library use: train your own ``nn.Module`` with data parallelism, ZeRO and tensor parallelism.

    engine = Engine(model, EngineConfig(parallel=ParallelConfig(dp=2, zero=3)))
    for inputs, targets in my_batches:          # this data-parallel rank's rows
        loss = engine.train_batch((inputs, targets))

Run it under torchrun (or any launcher that sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT), with
dp * tp * pp processes. Tensor parallelism needs a plan for the model's layers (``tp_plan``:
module name -> DTensor ParallelStyle, as for ``parallelize_module``); pipeline parallelism
needs a split (``pp_split(model, stage, n_stages) -> the stage's module``, whose outputs feed
the next stage's forward) and runs ``parallel.pp_schedule``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import parallelize_module

from engine import runtime
from engine.config import PRECISIONS, ConfigError, ParallelConfig, RunConfig
from engine.mesh import Mesh, build_mesh
from engine.parallel import data as dp_wrap
from engine.parallel.grad_norm import clip_, total_norm
from engine.parallel.pipeline import SCHEDULES
from engine.precision import Precision
from engine.validate import ZERO_STAGES


def _contains(root: nn.Module, module: nn.Module) -> bool:
    return any(m is module for m in root.modules())


def token_cross_entropy(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Default loss: mean cross-entropy of (B, T, vocab) logits against (B, T) token ids."""
    return F.cross_entropy(output.float().flatten(0, -2), targets.flatten())


@dataclass
class EngineConfig:
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # dp, tp, zero
    micro_batch: int = 0  # rows per forward/backward; 0 = the whole batch at once
    precision: str = "fp32"  # fp32 | bf16 | fp16
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 0.0  # 0 = no clipping
    pp_microbatches: int = 2  # micro-batches per step under pipeline parallelism
    device: str = "auto"

    def check(self, world_size: int) -> None:
        p = self.parallel
        if p.zero not in ZERO_STAGES:
            raise ConfigError(f"`parallel.zero` must be one of {ZERO_STAGES}, got {p.zero}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"`precision` must be one of {PRECISIONS}, got {self.precision!r}.")
        if p.n_ranks != world_size:
            raise ConfigError(
                f"parallel.dp * parallel.tp * parallel.pp = {p.n_ranks}, but {world_size} "
                "processes run."
            )
        if p.pp > 1 and SCHEDULES[p.pp_schedule].placement != "single":
            raise ConfigError(
                "library use runs one pipeline stage per rank; valid parallel.pp_schedule: "
                f"{[k for k, v in SCHEDULES.items() if v.placement == 'single']}."
            )
        if p.zero == 1 and (p.tp > 1 or p.pp > 1):
            raise ConfigError("`parallel.zero=1` cannot combine with tp or pp; use zero 0, 2, 3.")
        if self.precision == "fp16" and p.pp > 1:
            raise ConfigError("fp16 loss scaling is not offered with a user's pipeline; use bf16.")


class Engine:
    """Wraps a model for its layout and trains it one global batch at a time."""

    def __init__(
        self,
        model: nn.Module,
        config: EngineConfig,
        *,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = token_cross_entropy,
        tp_plan: dict | None = None,
        pp_split: Callable[[nn.Module, int, int], nn.Module] | None = None,
        shard_units: list[nn.Module] | None = None,
    ) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        config.check(world)
        run = RunConfig(
            parallel=dataclasses.replace(config.parallel, world_size=0), device=config.device
        )
        self.ctx = runtime.init(run) if not dist.is_initialized() else self._joined(run)
        self.mesh: Mesh = build_mesh(config.parallel, self.ctx)
        self.config, self.loss_fn = config, loss_fn
        self.schedule = None
        if self.mesh.pp > 1:
            if pp_split is None:
                raise ConfigError("`parallel.pp` > 1 needs `pp_split` for this model.")
            model = pp_split(model, self.mesh.pp_rank, self.mesh.pp)
            shard_units = [u for u in shard_units or [] if _contains(model, u)]
        model = model.to(self.ctx.device)
        if self.mesh.tp > 1:
            if not tp_plan:
                raise ConfigError("`parallel.tp` > 1 needs `tp_plan` for this model's layers.")
            parallelize_module(model, self.mesh.sub("tp"), tp_plan)
        self.model = dp_wrap.apply_data_parallel(
            model,
            config.parallel,
            self.mesh,
            device=self.ctx.device,
            precision=config.precision,
            units=shard_units or [],
        )
        if self.mesh.pp > 1:
            stage = PipelineStage(
                self.model,
                self.mesh.pp_rank,
                self.mesh.pp,
                self.ctx.device,
                group=self.mesh.group("pp"),
            )
            self.schedule = SCHEDULES[config.parallel.pp_schedule].cls(
                stage, n_microbatches=config.pp_microbatches, loss_fn=loss_fn, scale_grads=True
            )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.precision = Precision(config.precision, self.ctx.device)
        self.optimizer = dp_wrap.make_optimizer(
            self.params,
            config.parallel,
            self.mesh,
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
        )

    @staticmethod
    def _joined(run: RunConfig) -> runtime.DistContext:
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        device = runtime.resolve_device(run.device, local)
        backend = "nccl" if device.type == "cuda" else "gloo"
        return runtime.DistContext(rank, world, local, world, device, backend, True)

    @property
    def dp_rank(self) -> int:
        return self.mesh.dp_rank

    def _pipeline_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses: list[torch.Tensor] = []
        first, last = self.mesh.first_stage, self.mesh.last_stage
        with self.precision.autocast():
            args = (inputs,) if first else ()
            kwargs = {"target": targets, "losses": losses} if last else {}
            self.schedule.step(*args, **kwargs)
        total = torch.zeros((), device=self.ctx.device)
        if last:
            total = torch.stack([v.detach().float() for v in losses]).mean()
        # every stage returns the loss: the last stage sends it back along the pipeline
        dist.broadcast(total, group=self.mesh.group("pp"), group_src=self.mesh.pp - 1)
        return total

    def train_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        """One optimizer step on this rank's (inputs, targets); returns the mean loss over all
        data-parallel ranks. Under pipeline parallelism every stage passes the batch; the first
        stage uses the inputs, the last the targets."""
        inputs, targets = (t.to(self.ctx.device) for t in batch)
        if self.schedule is not None:
            return self._finish_step(self._pipeline_step(inputs, targets))
        size = self.config.micro_batch or inputs.shape[0]
        chunks = list(zip(inputs.split(size), targets.split(size)))
        total = torch.zeros((), device=self.ctx.device)
        for i, (x, y) in enumerate(chunks):
            with dp_wrap.no_sync(self.model, last_micro_batch=i == len(chunks) - 1):
                with self.precision.autocast():
                    out = self.model(x)
                loss = self.loss_fn(out, y) / len(chunks)
                self.precision.scale(loss).backward()
            part = loss.detach()
            total += part.full_tensor() if isinstance(part, DTensor) else part
        return self._finish_step(total)

    def _finish_step(self, total: torch.Tensor) -> float:
        self.precision.unscale(self.optimizer)
        norm = total_norm(self.params, self.mesh, self.ctx.device)
        clip_(self.params, norm, self.config.grad_clip)
        self.precision.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        group = self.mesh.group("dp")
        if group is not None:
            dist.all_reduce(total, group=group)
            total /= self.mesh.dp
        return total.item()

    def close(self) -> None:
        runtime.close(self.ctx)
