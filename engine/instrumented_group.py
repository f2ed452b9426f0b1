"""A gloo process group that counts every collective it is asked for and can add a fixed
latency to each: the second counter for the profiler's collective counts, and the known
delay (``debug.comm_delay_ms``) that checks the communication-time measurement.

Every process group of the run (the world and the mesh's sub-groups) is one of these, wrapping
a real ``ProcessGroupGloo``: DDP's reducer, FSDP2, DTensor's collectives and the pipeline's
sends and receives all call it. The delay is a completion callback of the inner operation:
gloo runs callbacks on the worker thread that executed the collective, before it closes the
collective's ``gloo:*`` profiler range, so the delay is part of the collective as gloo and the
profiler see it — later collectives queue behind it, and the caller's ``wait()`` returns
``delay`` later, as with a slower link. (If the operation finished before the callback was
attached, the callback runs on the caller's thread instead: the delay is then exposed but not
inside the ``gloo:*`` range; ``CallCounter.inline_delays`` counts such cases.)

CPU (gloo) only: on CUDA, NCCL's time is read from device kernels, which a host-side sleep
would not lengthen.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.distributed as dist
from torch._C._distributed_c10d import _create_work_from_future

# the Python-facing method names of ProcessGroup -> (the inner gloo method, the kind recorded)
_OPS = {
    "allreduce": ("allreduce", "all_reduce"),
    "allreduce_coalesced": ("allreduce_coalesced", "all_reduce"),
    "allgather": ("allgather", "all_gather"),
    "allgather_coalesced": ("allgather_coalesced", "all_gather"),
    "all_gather_single": ("_allgather_base", "all_gather"),
    "_allgather_base": ("_allgather_base", "all_gather"),
    "_reduce_scatter_base": ("_reduce_scatter_base", "reduce_scatter"),
    "reduce_scatter": ("reduce_scatter", "reduce_scatter"),
    "reduce_scatter_single": ("_reduce_scatter_base", "reduce_scatter"),
    "alltoall": ("alltoall", "all_to_all"),
    "all_to_all_single": ("alltoall_base", "all_to_all"),
    "broadcast": ("broadcast", "broadcast"),
    "reduce": ("reduce", "reduce"),
    "scatter": ("scatter", "scatter"),
    "gather": ("gather", "gather"),
    "send": ("send", "send"),
    "recv": ("recv", "recv"),
    "recv_anysource": ("recv_anysource", "recv"),
}


@dataclass
class CallCounter:
    """Collectives asked of this process's groups, by kind (barriers are not counted)."""

    calls: Counter = field(default_factory=Counter)
    inline_delays: int = 0  # delays that ran on the caller's thread (see the module docstring)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str) -> None:
        with self._lock:
            self.calls[kind] += 1

    def add_inline_delay(self) -> None:
        with self._lock:
            self.inline_delays += 1

    def snapshot(self) -> Counter:
        with self._lock:
            return Counter(self.calls)


class InstrumentedGroup(dist.ProcessGroup):
    """Forwards each collective to ``inner`` (a gloo backend), counting it and, with
    ``delay_s > 0``, completing it ``delay_s`` later."""

    def __init__(
        self,
        inner: dist.ProcessGroup,
        rank: int,
        size: int,
        *,
        counter: CallCounter,
        delay_s: float,
    ) -> None:
        super().__init__(rank, size)
        self.inner, self.counter, self.delay_s = inner, counter, delay_s

    def getBackendName(self) -> str:
        return BACKEND

    @property
    def group_name(self) -> str:
        # DeviceMesh and functional collectives look groups up by name; c10d registered ours
        return dist.distributed_c10d._world.pg_names[self]

    def barrier(self, *args, **kwargs):  # synchronisation, not traffic: neither counted nor delayed
        return self.inner.barrier(*args, **kwargs)

    def monitored_barrier(self, *args, **kwargs):
        return self.inner.monitored_barrier(*args, **kwargs)

    def _forward(self, method: str, kind: str, args: tuple, kwargs: dict) -> dist.Work:
        self.counter.add(kind)
        work = getattr(self.inner, method)(*args, **kwargs)
        if self.delay_s <= 0:
            return work
        caller = threading.get_ident()

        def late(fut):
            if threading.get_ident() == caller:
                self.counter.add_inline_delay()
            time.sleep(self.delay_s)
            return fut.value()

        try:
            future = work.get_future()
        except RuntimeError:  # some gloo works (e.g. reduce-scatter) have no future
            return _AllDone([work], delay_s=self.delay_s, counter=self.counter)
        return _create_work_from_future(future.then(late))


class _AllDone(dist.Work):
    """Done when every one of ``works`` is; for gloo works without futures. A delay here runs
    on the waiting thread (counted as inline)."""

    def __init__(self, works: list[dist.Work], *, delay_s: float, counter: CallCounter) -> None:
        super().__init__()
        self.works, self.delay_s, self.counter = works, delay_s, counter

    def wait(self, timeout=None) -> bool:
        for work in self.works:
            work.wait()
        if self.delay_s > 0:
            self.counter.add_inline_delay()
            time.sleep(self.delay_s)
            self.delay_s = 0  # once, however often it is waited on
        return True

    def is_completed(self) -> bool:
        return all(w.is_completed() for w in self.works)


def _coalesced(method: str, kind: str) -> Callable:
    """gloo has no coalesced tensor collectives: run one per pair, complete when all have."""

    def op(self: InstrumentedGroup, outputs, inputs, opts=None):
        args = (opts,) if opts is not None else ()
        works = [
            self._forward(method, kind, (out, inp, *args), {})
            for out, inp in zip(outputs, inputs, strict=True)
        ]
        return _AllDone(works, delay_s=0.0, counter=self.counter)

    return op


def _make_op(name: str, method: str, kind: str) -> Callable:
    def op(self: InstrumentedGroup, *args, **kwargs):
        return self._forward(method, kind, args, kwargs)

    op.__name__ = name
    return op


for _name, (_method, _kind) in _OPS.items():
    setattr(InstrumentedGroup, _name, _make_op(_name, _method, _kind))
for _name, _method, _kind in (
    ("allgather_into_tensor_coalesced", "_allgather_base", "all_gather"),
    ("all_gather_single_coalesced", "_allgather_base", "all_gather"),
    ("reduce_scatter_tensor_coalesced", "_reduce_scatter_base", "reduce_scatter"),
    ("reduce_scatter_single_coalesced", "_reduce_scatter_base", "reduce_scatter"),
):
    setattr(InstrumentedGroup, _name, _coalesced(_method, _kind))

BACKEND = "paratune_gloo"
# torch's backend registry is process-wide: the settings of the one registration live here
_settings: dict[str, object] = {}


def register(*, delay_s: float) -> CallCounter:
    """Make ``BACKEND`` available to ``init_process_group``; returns the counter its groups
    share. One run per process: registering again replaces the settings."""
    counter = CallCounter()
    _settings.update(counter=counter, delay_s=delay_s)
    if not hasattr(dist.Backend, BACKEND.upper()):

        def create(store, rank: int, size: int, timeout) -> InstrumentedGroup:
            inner = dist.ProcessGroupGloo(store, rank, size, timeout)
            return InstrumentedGroup(
                inner, rank, size, counter=_settings["counter"], delay_s=_settings["delay_s"]
            )

        dist.Backend.register_backend(BACKEND, create, devices=["cpu"])
    return counter
