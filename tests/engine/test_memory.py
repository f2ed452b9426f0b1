from __future__ import annotations

import threading

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import ProfilerActivity, profile

from engine.metrics.memory import PeakMemory, live_tensor_bytes, window_peak_bytes
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


def _free_elsewhere_then_allocate(n: int):
    """A profiled window: a storage of ``n`` floats whose last reference dies on another
    thread, then one more of that size; (profiler, whether the address was handed out again)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        held = [torch.ones(n)]
        first = held[0].data_ptr()
        worker = threading.Thread(target=held.clear)  # the free happens there, unrecorded
        worker.start()
        worker.join()
        again = torch.ones(n)
        reused = again.data_ptr() == first
        del again
    return prof, reused


def test_window_peak_puts_back_a_free_made_on_an_unprofiled_thread():
    """A storage whose last reference dies on a thread the profiler does not watch (as a
    collective's copy on gloo's worker thread) is freed without a recorded event; when its
    address is handed out again, it must not count twice."""
    n = 8 * 1024  # 32 KiB, below malloc's mmap threshold: a freed block is handed out again
    for _ in range(20):  # malloc usually, not always, hands the same block out again
        prof, reused = _free_elsewhere_then_allocate(n)
        if reused:
            break
    else:
        pytest.skip("the allocator never handed the same block out again")
    recorded = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    assert sum(x for x in recorded if x > 0) == 2 * 4 * n  # both allocations were recorded
    assert sum(x for x in recorded if x < 0) == -4 * n  # and only one free
    assert window_peak_bytes(prof) == 4 * n


@pytest.fixture
def group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("bucket_view", [False, True], ids=["copied", "bucket-view"])
def test_ddp_buckets_count_once(group, bucket_view):
    """DDP's gradient buckets live in C++ and are added to the reachable tensors; with
    gradient_as_bucket_view the gradients handed to Python are views into them, whose Python
    objects outlive zero_grad: the buckets must not count twice, before or after DDP rebuilds
    them (second step) into buckets of other sizes."""
    before = live_tensor_bytes([])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    ddp = DistributedDataParallel(model, gradient_as_bucket_view=bucket_view, bucket_cap_mb=0.25)
    x = torch.ones(4, 256)
    for _ in range(3):
        ddp(x).sum().backward()
        assert all(p.grad is not None for p in model.parameters())  # handed to Python
        model.zero_grad(set_to_none=True)
        # the parameters and their buckets; the input is the only other tensor
        assert live_tensor_bytes([ddp]) - before == 2 * params + x.nbytes
