"""Per-process peak memory, reset at the start of measurement.

CUDA: the caching allocator's own statistics. CPU: the kernel's resident-set high-water mark
(``VmHWM``), which ``/proc/self/clear_refs`` resets. ``ru_maxrss`` is not used: a spawned worker
inherits its parent's value.
"""

from __future__ import annotations

from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in {_STATUS}")


class PeakMemory:
    """``reset()`` starts a measurement window; ``read()`` returns the peaks since then (bytes)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "cuda_allocator" if device.type == "cuda" else "vmhwm"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            # "5" resets the peak RSS to the current RSS (Documentation/filesystems/proc.rst)
            _CLEAR_REFS.write_text("5")

    def read(self) -> dict[str, int]:
        if self.device.type == "cuda":
            stats = torch.cuda.memory_stats(self.device)
            return {
                "peak_mem_bytes": torch.cuda.max_memory_allocated(self.device),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
                # cudaMalloc retries after freeing cached blocks: a sign of memory pressure
                "alloc_retries": int(stats.get("num_alloc_retries", 0)),
            }
        return {
            "peak_mem_bytes": _status_kib("VmHWM") * 1024,
            "rss_bytes": _status_kib("VmRSS") * 1024,
        }
