"""Mixed precision: autocast for bf16/fp16, dynamic loss scaling for fp16.

Parameters and optimizer state stay fp32 (the master weights); autocast runs matmuls in the low
precision. fp16's narrow exponent range needs loss scaling (Micikevicius et al. 2018); bf16's
does not.

The loss scaler is our own rather than ``torch.amp.GradScaler`` because gradients here may be
DTensors (tensor parallel, FSDP2) or spread over pipeline stages: the overflow check runs on
each rank's local shards and the verdict is agreed by all ranks (one all-reduce of a flag), so
every rank skips the same steps and the replicas never drift apart.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from engine.parallel.tensor import is_dtensor

# train.precision / train.reduce_dtype name -> torch dtype (the one map of these names)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class LossScaler:
    """Dynamic loss scaling: back off on overflow, grow after ``growth_interval`` good steps."""

    def __init__(
        self,
        device: torch.device,
        *,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        synchronize: bool = True,
    ) -> None:
        self.device = device
        self.scale = init_scale
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self.good_steps = 0
        self.synchronize = synchronize and dist.is_available() and dist.is_initialized()
        self.found_inf = False

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide gradients by the scale; note (agreed over all ranks) whether any overflowed."""
        grads = [
            p.grad.to_local() if is_dtensor(p.grad) else p.grad
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        flag = torch.zeros(1, device=self.device)
        inv = torch.full((1,), 1.0 / self.scale, device=self.device)
        if grads:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, inv)
        if self.synchronize:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.found_inf = bool(flag.item())

    def update(self) -> bool:
        """After unscale_: returns whether to apply the step, and adjusts the scale."""
        if self.found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            return False
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0
        return True

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "good_steps": float(self.good_steps)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])


class Precision:
    def __init__(
        self, precision: str, device: torch.device, *, growth_interval: int = 2000
    ) -> None:
        self.precision = precision
        self.device = device
        self.scaler = (
            LossScaler(device, growth_interval=growth_interval) if precision == "fp16" else None
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":  # no autocast: everything runs in fp32
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scaler.scale if self.scaler is not None else loss

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the update; returns False when fp16 loss scaling skipped it (inf/NaN grads)."""
        if self.scaler is not None and not self.scaler.update():
            return False
        optimizer.step()
        return True

    @property
    def loss_scale(self) -> float | None:
        return self.scaler.scale if self.scaler is not None else None
