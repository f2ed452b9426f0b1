from __future__ import annotations

import torch

from engine.metrics.memory import PeakMemory
from engine.units import MIB


def test_cpu_peak_sees_a_known_allocation_and_resets():
    mem = PeakMemory(torch.device("cpu"))
    mem.reset()
    base = mem.read()["peak_mem_bytes"]
    block = torch.ones(64 * MIB // 4)  # 64 MiB, touched so it is resident
    grown = mem.read()["peak_mem_bytes"] - base
    del block
    assert 60 * MIB <= grown <= 72 * MIB
    mem.reset()  # after freeing, a new window no longer holds the old peak
    assert mem.read()["peak_mem_bytes"] - base < 8 * MIB
