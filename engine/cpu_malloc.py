"""Keep freed memory in the process's heap on CPU runs, instead of handing it back to the OS
after every step.

glibc's malloc serves large blocks (above a threshold that starts at 128 KiB) with their own
``mmap`` and returns them with ``munmap`` when freed, and gives the top of its heap back once
more than a trim threshold is free. A training step frees and allocates the same large
buffers every time (FSDP2's gathered parameters, its reduce-scatter buffers, activations),
so each step faults every page of them in again, zero-filled by the kernel: measured on 2
gloo ranks with the 5.3M-parameter GPT of bench/vs_deepspeed.py under ZeRO-2, 4,000-13,000
minor page faults and 35-45 ms of system time per step, against none and 16-30 ms with the
settings below. Fixed thresholds (which also turn off glibc's adaptive ones) keep blocks up
to 32 MiB (its largest mmap threshold on 64-bit) in the heap and the heap's free top mapped,
as the allocators PyTorch recommends for CPU training (jemalloc, tcmalloc) do by caching.

Process-wide, so a library ``Engine`` on CPU applies it to its caller's process too; the
resident size stays at its peak, which is what ``peak_mem_bytes`` (VmHWM) reports anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from engine.units import MIB

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * MIB  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the largest accepted
TRIM_THRESHOLD = 1 << 30  # free heap kept mapped before any is returned


def _glibc() -> ctypes.CDLL | None:
    """The C library, where it is glibc (it has mallopt and malloc_trim); else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc's, or AttributeError
    except (OSError, AttributeError, TypeError):  # no C library found, or not glibc's malloc
        return None
    return libc


def keep_freed_memory() -> bool:
    """Set the thresholds above; False (and nothing changed) where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        log.warning("mallopt refused the heap thresholds; CPU steps fault their buffers in")
    return ok


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS now (glibc's malloc_trim): a resident
    high-water mark measured from here sees new allocations again, rather than reused pages
    the thresholds above kept (engine.metrics.memory resets its CPU window with it)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
