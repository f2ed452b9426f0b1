"""engine.cpu_malloc: a freed buffer is handed out again without its pages faulting in."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.units import MIB

# a 16 MiB block malloc'ed, written, freed, and malloc'ed and written again (as a step's
# buffers are); prints the minor page faults of the second one, what every step after the
# first would pay for each such buffer. Plain malloc: torch's CPU allocator adds alignment
# slack and small allocations in between, which decide where a block lands but not whether
# its pages come back from the kernel
_SCRIPT = """
import ctypes, resource, sys
from engine import cpu_malloc
if sys.argv[1] == "keep":
    assert cpu_malloc.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 16 << 20
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size)
ctypes.memset(block, 1, size)
libc.free(ctypes.c_void_p(block))
before = faults()
block = libc.malloc(size)
ctypes.memset(block, 1, size)
print(faults() - before)
"""
PAGES = 16 * MIB // 4096


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_buffer_comes_back_without_faulting_its_pages_in():
    # glibc's defaults: the first block was mapped on its own and unmapped when freed, and
    # the second comes from the heap, which grows by new pages
    assert _faults("default") > PAGES // 2
    assert _faults("keep") < PAGES // 16


_WINDOW = """
import torch
from engine import cpu_malloc
from engine.metrics.memory import PeakMemory
from engine.units import MIB
assert cpu_malloc.keep_freed_memory()
blocks = [torch.ones(8 * MIB // 4) for _ in range(16)]  # 128 MiB in the heap, then freed
del blocks
mem = PeakMemory(torch.device("cpu"))
mem.reset()
base = mem.read()["peak_mem_bytes"]
block = torch.ones(24 * MIB // 4)  # from the kept heap, unless the window handed it back
print((mem.read()["peak_mem_bytes"] - base) // MIB)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_measurement_window_sees_allocations_that_reuse_kept_memory():
    # the heap kept for reuse is resident already: a window that started without handing it
    # back would see a new block's bytes as no growth at all
    out = subprocess.run(
        [sys.executable, "-c", _WINDOW], capture_output=True, text=True, check=True
    )
    assert 20 <= int(out.stdout.strip()) <= 28
