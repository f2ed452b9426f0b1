"""Train your own model with paratune's engine as a library: DP, ZeRO 0-3, TP and PP plans.

    torchrun --nproc-per-node 2 --master-addr 127.0.0.1 examples/custom_model.py --zero 3
    torchrun --nproc-per-node 2 --master-addr 127.0.0.1 examples/custom_model.py --tp 2
    torchrun --nproc-per-node 2 --master-addr 127.0.0.1 examples/custom_model.py --pp 2
    python examples/custom_model.py            # one process, the reference

Each process feeds its own rows of every global batch; the printed losses are global-batch
means, the same (up to rounding) for any number of processes and any ZeRO stage.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from engine import Engine, EngineConfig, ParallelConfig, TrainConfig


class TinyRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU())
        self.out = nn.Linear(128, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x)).squeeze(-1)


class Squeeze(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(-1)


# tensor parallelism: the first Linear split by output features, the second by input features
# (one all-reduce per forward, Megatron-style)
TP_PLAN = {"body.0": ColwiseParallel(), "body.2": RowwiseParallel()}


def pp_split(model: TinyRegressor, stage: int, n_stages: int) -> nn.Module:
    """Two pipeline stages: the body, then the output layer."""
    assert n_stages == 2, "this example splits into exactly two stages"
    return model.body if stage == 0 else nn.Sequential(model.out, Squeeze())


def global_batch(step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(size, 32, generator=g)
    return x, x[:, :4].sum(-1).sin()  # a smooth target the model can learn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zero", type=int, default=0)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--global-batch", type=int, default=16)
    args = parser.parse_args()
    dp = int(os.environ.get("WORLD_SIZE", "1")) // (args.tp * args.pp)

    torch.manual_seed(0)  # the same initial weights in every process
    model = TinyRegressor()
    parallel = ParallelConfig(dp=dp, tp=args.tp, pp=args.pp, zero=args.zero, pp_schedule="gpipe")
    train = TrainConfig(global_batch=args.global_batch, micro_batch=4, lr=1e-3)
    config = EngineConfig(parallel=parallel, train=train)
    engine = Engine(
        model,
        config,
        loss_fn=nn.functional.mse_loss,
        tp_plan=TP_PLAN,
        pp_split=pp_split,
        shard_units=list(model.body.children()),
    )
    rows = args.global_batch // dp
    losses = []
    for step in range(args.steps):
        x, y = global_batch(step, args.global_batch)
        mine = slice(engine.dp_rank * rows, (engine.dp_rank + 1) * rows)
        losses.append(engine.train_batch((x[mine], y[mine])))
    if engine.ctx.rank == 0:
        print(json.dumps({"losses": losses}))
    engine.close()


if __name__ == "__main__":
    main()
