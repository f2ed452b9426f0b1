"""Microbenchmarks of this machine for the performance model: matmul rates by size and dtype,
memory bandwidth, and collective latency and bandwidth by kind and group size.

``python -m engine.microbench OUT.json`` run as N ranks (engine.launch) times the collectives
of one process group of N, then every rank times matmuls and copies at once (ranks that share
cores share their rate, as in training); rank 0 writes its figures to OUT.json. Each figure is
sustained over a fraction of a second (collectives: the best of a few repeats): the machine's
capability, which the model scales by its fitted efficiencies.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from engine.config import ParallelConfig, RunConfig
from engine.precision import DTYPES

MATMUL_SIZES = (64, 128, 256, 512, 1024)
MESSAGE_BYTES = (4, 4096, 65536, 1 << 20, 8 << 20)
KINDS = ("all_reduce", "all_gather", "broadcast", "send")
REPEATS = 5


def _best(fn, repeats: int = REPEATS) -> float:
    fn()  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _sustained(fn, seconds: float = 0.3) -> float:
    """Seconds per call of ``fn`` run back to back for ``seconds``: with every rank doing the
    same, what each gets of cores they share (a best-of-N time would catch a quiet moment)."""
    fn()  # warm up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def matmul_rates(precisions: tuple[str, ...] = ("fp32", "bf16"), rounds: int = 3) -> list[dict]:
    """FLOP/s of a (n, n) @ (n, n) matmul per size and dtype: the median of ``rounds`` passes
    over every size and dtype, so that a few seconds of other load on the machine disturb
    one pass, not the figure (one such spell once read a quarter of the rate as half)."""
    inputs = {
        (prec, n): (torch.randn(n, n, dtype=DTYPES[prec]), torch.randn(n, n, dtype=DTYPES[prec]))
        for prec in precisions
        for n in MATMUL_SIZES
    }
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in inputs}
    for _ in range(rounds):
        for (prec, n), (a, b) in inputs.items():
            call = lambda a=a, b=b: torch.mm(a, b)  # noqa: E731
            seconds[(prec, n)].append(_sustained(call, seconds=0.3 / rounds))
    return [
        {"precision": prec, "size": n, "flops_per_s": 2 * n**3 / statistics.median(times)}
        for (prec, n), times in seconds.items()
    ]


def memory_bandwidth(n_bytes: int = 256 << 20) -> float:
    """Bytes per second of a large copy (a read and a write of each byte)."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    return 2 * n_bytes / _sustained(lambda: dst.copy_(src))


def _collective(kind: str, n_bytes: int, rank: int, world: int) -> float:
    x = torch.ones(max(1, n_bytes // 4), dtype=torch.float32)
    if kind == "all_reduce":
        return _best(lambda: dist.all_reduce(x))
    if kind == "all_gather":
        out = torch.empty(world * x.numel(), dtype=x.dtype)
        return _best(lambda: dist.all_gather_into_tensor(out, x))
    if kind == "broadcast":
        return _best(lambda: dist.broadcast(x, src=0))

    def ping() -> None:  # rank 0 <-> 1 one way: the time of one send of x
        if rank == 0:
            dist.send(x, dst=1)
        elif rank == 1:
            dist.recv(x, src=0)
        dist.barrier()

    return _best(ping)


def collective_times(rank: int, world: int) -> list[dict]:
    out = []
    for kind in KINDS:
        for n in MESSAGE_BYTES:
            dist.barrier()
            seconds = _collective(kind, n, rank, world)
            out.append({"kind": kind, "group": world, "bytes": n, "seconds": seconds})
    return out


def main(out_path: str) -> None:
    import os

    from engine import runtime

    world = int(os.environ.get("WORLD_SIZE", "1"))
    ctx = runtime.init(RunConfig(parallel=ParallelConfig(dp=world), device="cpu"))
    rows = collective_times(ctx.rank, ctx.world_size) if ctx.world_size > 1 else []
    # every rank computes at once, as in training: ranks that share cores share their rate
    if ctx.world_size > 1:
        dist.barrier()
    matmul, memory = matmul_rates(), memory_bandwidth()
    if ctx.is_main:
        result = {
            "world_size": ctx.world_size,
            "threads": torch.get_num_threads(),
            "collectives": rows,
            "matmul": matmul,
            "memory_bytes_per_s": memory,
        }
        Path(out_path).write_text(json.dumps(result, indent=1))
    runtime.close(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
