"""Per-process peak memory, reset at the start of measurement.

CUDA: the caching allocator's own statistics. CPU: the kernel's resident-set high-water mark
(``VmHWM``), which ``/proc/self/clear_refs`` resets. ``ru_maxrss`` is not used: a spawned worker
inherits its parent's value.

VmHWM also counts the runtime (libraries, interpreter) and pages freed but not returned, so on
CPU a second figure counts tensors only, to compare with the analytic prediction:
``tensor_peak_bytes`` = the storages alive at the start of the profiled steps (every tensor
reachable from Python, plus DDP's gradient buckets, which live in C++, each counted once) + the
highest running sum of the allocations and frees that the profiler's memory events record during
those steps.
Both are made independent of timing: garbage is collected before the live storages are counted,
and the frees the profiler misses on gloo's worker threads are put back (``window_peak_bytes``).
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from engine.cpu_malloc import release_freed_memory
from engine.units import KIB

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def status_bytes(field: str) -> int:
    """A size field of this process's /proc status (``VmRSS``, ``VmHWM``...), in bytes."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * KIB
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
            release_freed_memory()  # pages kept for reuse would hide the window's allocations
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
            "peak_mem_bytes": status_bytes("VmHWM"),
            "rss_bytes": status_bytes("VmRSS"),
        }


def live_tensor_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of every distinct CPU storage reachable from Python objects (parameters, buffers,
    optimizer state, ...), plus the gradient buckets of DDP modules among ``modules`` that are
    not among them."""
    seen: dict[int, int] = {}
    flat_views: dict[int, int] = {}  # storages seen through views of a whole flat tensor
    # tensors in unreachable reference cycles are still listed until the collector runs, and
    # when it runs is up to the allocation counts: collect first, so that only live ones count
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch's deprecated aliases warns
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [obj for obj in gc.get_objects() if _is_tensor(obj)]
    for obj in tensors:
        local = getattr(obj, "_local_tensor", obj)  # DTensor: its shard holds the storage
        try:
            # torch.compile's fake tensors (kept in its caches) have no data
            if local.device.type != "cpu" or local.is_meta or isinstance(local, FakeTensor):
                continue
            storage = local.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            if _views_flat_storage(local):
                flat_views[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without a storage
            continue
    buckets = sum(_ddp_bucket_bytes(m) for m in modules)
    # with gradient_as_bucket_view (engine.parallel.data) a gradient handed to Python is a view
    # into its bucket, and its Python object lives on, listed among the tensors above, for as
    # long as the reducer keeps the view (after zero_grad too): such buckets were counted there
    if any(getattr(m, "gradient_as_bucket_view", False) for m in modules):
        buckets = max(buckets - sum(flat_views.values()), 0)
    return sum(seen.values()) + buckets


def _is_tensor(obj: object) -> bool:
    try:
        return isinstance(obj, torch.Tensor)
    except ReferenceError:  # a weak proxy (torch.compile keeps some) whose object is gone
        return False


def _views_flat_storage(tensor: torch.Tensor) -> bool:
    """A view of a one-dimensional tensor spanning its whole storage (as DDP's bucket views)."""
    if not tensor._is_view() or tensor._base is None:
        return False
    base = tensor._base
    return base.dim() == 1 and base.numel() * base.element_size() == base.untyped_storage().nbytes()


def _ddp_bucket_bytes(module: nn.Module) -> int:
    if not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return 0
    sizes = str(module._get_ddp_logging_data().get("bucket_sizes", ""))
    return sum(int(x) for x in sizes.split(",") if x.strip())


def window_peak_bytes(prof: Any) -> int | None:
    """Highest running sum of CPU allocations minus frees in a profiler run made with
    ``profile_memory=True`` (None if its memory events cannot be read).

    The profiler records a free only on a thread it profiles. A collective hands its tensors
    to a work object, and the last reference to that object may be dropped on gloo's worker
    thread: the free of a copy the collective made (gloo's reduce-scatter clones its input),
    or of a functional collective's output already consumed, is then never recorded, and the
    storage would count as alive for as long as the thread scheduler happened to delay it. A
    missed free shows when the address is handed out again: the storage was free by then. An
    allocation made inside a ``c10d::`` call and never seen freed is freed when the call
    returns (a synchronous call's caller waits for the collective there and allocates nothing
    meanwhile)."""
    try:
        roots = prof.profiler.kineto_results.experimental_event_tree()
    except AttributeError:
        return None
    events = sorted(_memory_events(roots), key=lambda e: e[0])
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def _memory_events(roots: list[Any]) -> list[tuple[int, int]]:
    """(time ns, bytes) of every CPU allocation (+) and free (-), with the frees the
    profiler missed put back (see window_peak_bytes)."""
    allocs: list[tuple[int, int, int, int | None]] = []  # time, bytes, address, call's end
    stack = [(root, None) for root in roots]
    while stack:
        node, call_end = stack.pop()
        if node.tag.name == "Allocation":
            fields = node.extra_fields
            if fields.device.type == "cpu" and fields.alloc_size:
                allocs.append((node.start_time_ns, fields.alloc_size, fields.ptr, call_end))
            continue
        if node.name.startswith("c10d::"):
            call_end = node.end_time_ns
        stack.extend((child, call_end) for child in node.children)
    allocs.sort(key=lambda a: a[0])
    events = [(t, n) for t, n, _, _ in allocs]
    open_: dict[int, tuple[int, int | None]] = {}  # address -> (bytes, end of its c10d call)
    for t, n, ptr, call_end in allocs:
        if n < 0:
            open_.pop(ptr, None)
            continue
        missed = open_.pop(ptr, None)
        if missed is not None:  # the address is handed out again: its free was missed
            events.append((min(missed[1] or t - 1, t - 1), -missed[0]))
        open_[ptr] = (n, call_end)
    events += [(end, -n) for n, end in open_.values() if end is not None]
    return events
