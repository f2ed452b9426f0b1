"""Library use: train your own ``nn.Module`` with data parallelism, ZeRO and tensor parallelism.

    engine = Engine(model, EngineConfig(parallel=ParallelConfig(dp=2, zero=3)))
    for inputs, targets in my_batches:          # this data-parallel rank's rows
        loss = engine.train_batch((inputs, targets))

Run it under torchrun (or any launcher that sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT), with
dp * tp processes. Tensor parallelism needs a plan for the model's layers (``tp_plan``: module
name -> DTensor ParallelStyle, as for ``parallelize_module``); pipeline parallelism is not
offered here yet: it needs a stage split of the model, which the built-in GPT has.
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
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import parallelize_module

from engine import dist as edist
from engine.config import PRECISIONS, ConfigError, ParallelConfig, RunConfig
from engine.mesh import Mesh, build_mesh
from engine.parallel import data as dp_wrap
from engine.parallel.grad_norm import clip_, total_norm
from engine.precision import Precision
from engine.validate import ZERO_STAGES


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
    device: str = "auto"

    def check(self, world_size: int) -> None:
        p = self.parallel
        if p.pp != 1:
            raise ConfigError("`parallel.pp` must be 1 in library use (no stage split is known).")
        if p.zero not in ZERO_STAGES:
            raise ConfigError(f"`parallel.zero` must be one of {ZERO_STAGES}, got {p.zero}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"`precision` must be one of {PRECISIONS}, got {self.precision!r}.")
        if p.dp * p.tp != world_size:
            raise ConfigError(
                f"parallel.dp * parallel.tp = {p.dp * p.tp}, but {world_size} processes run."
            )
        if self.precision == "fp16" and (p.zero >= 2 or p.tp > 1):
            raise ConfigError("fp16 loss scaling runs with zero 0/1 and tp=1 only; use bf16.")


class Engine:
    """Wraps a model for its layout and trains it one global batch at a time."""

    def __init__(
        self,
        model: nn.Module,
        config: EngineConfig,
        *,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = token_cross_entropy,
        tp_plan: dict | None = None,
        shard_units: list[nn.Module] | None = None,
    ) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        config.check(world)
        run = RunConfig(
            parallel=dataclasses.replace(config.parallel, world_size=0), device=config.device
        )
        self.ctx = edist.init(run) if not dist.is_initialized() else self._joined(run)
        self.mesh: Mesh = build_mesh(config.parallel, self.ctx)
        self.config, self.loss_fn = config, loss_fn
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
    def _joined(run: RunConfig) -> edist.DistContext:
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        device = edist.resolve_device(run.device, local)
        backend = "nccl" if device.type == "cuda" else "gloo"
        return edist.DistContext(rank, world, local, world, device, backend, True)

    @property
    def dp_rank(self) -> int:
        return self.mesh.dp_rank

    def train_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        """One optimizer step on this rank's (inputs, targets); returns the mean loss over all
        data-parallel ranks."""
        inputs, targets = (t.to(self.ctx.device) for t in batch)
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
        edist.close(self.ctx)
