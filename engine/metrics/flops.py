"""Model FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B) and device peaks for MFU."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.model import count_params

log = logging.getLogger(__name__)

# Dense peak FLOP/s per device, from vendor datasheets (no sparsity).
GPU_PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},  # SXM
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
}


def flops_per_token(cfg: ModelConfig) -> float:
    """6N + 12·L·H·Q·T training FLOPs per token: 6N for the matmuls of forward and backward over
    the N non-embedding parameters (the output head included), 12·L·H·Q·T for attention scores.
    """
    n = count_params(cfg)["non_embedding"]
    head_dim = cfg.d_model // cfg.n_heads
    return 6.0 * n + 12.0 * cfg.n_layers * cfg.n_heads * head_dim * cfg.seq_len


def hardware_flops_per_token(cfg: ModelConfig, activation_checkpointing: str) -> float:
    """FLOPs the hardware executes per token, recomputation included (for HFU, PaLM app. B).

    Full checkpointing runs each block's forward twice: the blocks' forward share (a third of
    their training FLOPs) is added again; the output head is not recomputed. Selective
    checkpointing keeps the matmul and attention outputs and recomputes element-wise work
    only, whose FLOPs this count ignores, as the model FLOPs do.
    """
    total = flops_per_token(cfg)
    if activation_checkpointing != "full":
        return total
    head = 6.0 * cfg.vocab_size * cfg.d_model
    return total + (total - head) / 3.0


def gpu_peak(device: torch.device, precision: str) -> float:
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAKS.items():
        if key in name:
            return peaks[precision]
    raise ValueError(
        f"no peak FLOP/s known for GPU {name!r}; set `peak_flops` (known: {list(GPU_PEAKS)})."
    )


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
    """Measured matmul peak of one rank's threads, cached per machine, thread count and dtype."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    key = f"{platform.node()}|{platform.processor() or platform.machine()}|{threads}|{precision}"
    path = _cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = measure_cpu_peak(threads, dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
        log.info("measured CPU peak %.3g FLOP/s for %s", cache[key], key)
    return float(cache[key])
