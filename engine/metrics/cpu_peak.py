"""This CPU's matmul peak, measured once per machine, thread count and dtype and cached: the
peak MFU is measured against on CPU (engine.metrics.flops holds the formulas and GPU table)."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from pathlib import Path

import torch

from engine.fileio import atomic_write_text
from engine.precision import DTYPES

log = logging.getLogger(__name__)


def _cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "paratune" / "cpu_peak_flops.json"


def measure_cpu_peak(
    threads: int, dtype: torch.dtype, *, size: int = 1024, repeats: int = 5
) -> float:
    """Best-of-``repeats`` FLOP/s of a square matmul on ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        torch.mm(a, b)  # warm up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    return 2.0 * size**3 / best


def cpu_peak(threads: int, precision: str) -> float:
    """Measured matmul peak of one rank's threads, cached per machine, thread count and dtype.

    bf16/fp16 runs use autocast, which runs some ops in the low precision and the rest in
    fp32, and a CPU without native fp16 arithmetic computes fp16 in fp32 after converting; no
    mix runs faster than the faster of the two rates, so the peak of bf16/fp16 is the larger
    of that dtype's matmul and fp32's. (A plain fp16 matmul can run tens of times slower than
    fp32 on such a CPU: against that figure alone MFU exceeded 100%.)
    """
    peak = _cached_cpu_peak(threads, precision)
    if precision != "fp32":
        peak = max(peak, _cached_cpu_peak(threads, "fp32"))
    return peak


def _cached_cpu_peak(threads: int, precision: str) -> float:
    dtype = DTYPES[precision]
    key = f"{platform.node()}|{platform.processor() or platform.machine()}|{threads}|{precision}"
    path = _cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    value = cache.get(key)
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    cache[key] = measure_cpu_peak(threads, dtype)
    log.info("measured CPU peak %.3g FLOP/s for %s", cache[key], key)
    try:  # a cache that cannot be written costs a measurement next time, never the run
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, indent=1))
    except OSError as err:
        log.warning("could not cache the CPU peak in %s: %s", path, err)
    return float(cache[key])
