"""Profiler events as plain records, and the names of collective kinds.

``metrics.comm`` sums communication over these records rather than over the profiler's own
objects, so that its attribution of NCCL kernels can be checked on a Chrome trace (recorded on a
GPU, or written by hand in that format) without a GPU.

How a device kernel is tied to its collective: each host op carries a correlation id
(``FunctionEvent.id``; "External id" in a Chrome trace), and each kernel the id of the host op
that was innermost when it was launched (``FunctionEvent.linked_correlation_id``; the kernel's
"External id"). For NCCL that op is the ``nccl:<op>`` annotation itself or an op nested in it
(``record_param_comms``, ``c10d::allreduce_``), which ``metrics.comm`` resolves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# host-side collective ranges: `gloo:all_reduce`, `nccl:_all_gather_base`, and point-to-point
# ones that name their peers (`nccl:send 0->1`, `nccl:recv 1<-0`)
_COLLECTIVE = re.compile(r"^(gloo|nccl):([a-z_]+)(?: \d+(?:->|<-)\d+)?$")
# the dispatcher ops of torch.distributed (`c10d::allreduce_`, `c10d::_reduce_scatter_base_`)
_C10D = re.compile(r"^c10d::([a-z_]+)$")
# NCCL kernels name the primitive they run: `ncclDevKernel_AllReduce_Sum_f32_RING_LL(...)`,
# `ncclKernel_AllGather_RING_LL_Sum_int8_t`, older `ncclAllReduceRingLLKernel_sum_f32`; NCCL
# 2.19+ also runs several primitives through one `ncclDevKernel_Generic`
_KERNEL = re.compile(
    r"^nccl(?:Dev)?Kernel_([A-Za-z]+)"
    r"|^nccl(AllReduce|AllGather|ReduceScatter|Broadcast|Reduce|SendRecv|Send|Recv)\w*Kernel"
)
_KERNEL_KINDS = {
    "AllReduce": "all_reduce",
    "AllGather": "all_gather",
    "ReduceScatter": "reduce_scatter",
    "Broadcast": "broadcast",
    "Reduce": "reduce",
    "SendRecv": "send_recv",  # one kernel for sends and receives: the direction is the host's
    "Send": "send",
    "Recv": "recv",
}
_ALIASES = {
    "allreduce": "all_reduce",
    "allgather": "all_gather",
    "reducescatter": "reduce_scatter",
    "alltoall": "all_to_all",
}
# variants of one collective that move the same bytes: FSDP's `_all_gather_base` and
# `_reduce_scatter_base`, `all_gather_into_tensor`, `reduce_scatter_tensor`, coalesced forms
_VARIANT_SUFFIXES = ("_coalesced", "_base", "_into_tensor", "_tensor")


def canonical_kind(op: str) -> str:
    """One name per collective: ``_allgather_base`` and ``all_gather_into_tensor`` are
    ``all_gather``, ``allreduce_`` is ``all_reduce``, ``_reduce_scatter_base`` is
    ``reduce_scatter``."""
    op = op.strip("_")
    for suffix in _VARIANT_SUFFIXES:
        op = op.removesuffix(suffix)
    return _ALIASES.get(op, op)


@dataclass(frozen=True)
class TraceEvent:
    """One profiler event, reduced to what communication accounting needs."""

    name: str
    start_us: float
    dur_us: float
    on_device: bool = False  # a kernel (or other device activity), not a host op
    thread: int = 0
    correlation: int = 0  # host op: its own correlation id
    link: int = 0  # kernel: the correlation id of the host op that launched it (0: none)
    input_shapes: tuple = ()  # host op: one shape (list of ints) per argument
    input_dtypes: tuple = ()  # host op: the profiler's dtype name per argument ("" if none)

    @property
    def end_us(self) -> float:
        return self.start_us + self.dur_us


def host_collective(name: str) -> tuple[str, str] | None:
    """(backend, canonical kind) of a ``gloo:*`` / ``nccl:*`` range, else None."""
    match = _COLLECTIVE.match(name)
    if match is None:
        return None
    return match.group(1), canonical_kind(match.group(2))


def dispatcher_kind(name: str) -> str | None:
    """The kind of a ``c10d::`` dispatcher op, else None."""
    match = _C10D.match(name)
    return canonical_kind(match.group(1)) if match else None


def is_nccl_kernel(name: str) -> bool:
    return name.startswith("nccl") and "Kernel" in name


def kernel_kind(name: str) -> str | None:
    """The collective an NCCL kernel's name states, or None (``Generic``, unknown names)."""
    match = _KERNEL.match(name)
    if match is None:
        return None
    return _KERNEL_KINDS.get(match.group(1) or match.group(2))


def from_profiler(events: Iterable[Any]) -> list[TraceEvent]:
    """Records of ``prof.events()`` (torch.autograd.profiler.FunctionEvent)."""
    out = []
    for ev in events:
        device_type = getattr(ev, "device_type", None)
        out.append(
            TraceEvent(
                name=ev.name,
                start_us=ev.time_range.start,
                dur_us=ev.time_range.end - ev.time_range.start,
                on_device=device_type is not None and getattr(device_type, "name", "CPU") != "CPU",
                thread=getattr(ev, "thread", 0),
                correlation=getattr(ev, "id", 0) or 0,
                link=getattr(ev, "linked_correlation_id", 0) or 0,
                input_shapes=tuple(ev.input_shapes or ()),
                input_dtypes=tuple(getattr(ev, "input_dtypes", None) or ()),
            )
        )
    return out


# Chrome-trace categories of device activity (torch.profiler's export_chrome_trace)
_DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation")
_RUNTIME_CATEGORIES = ("cuda_runtime", "cuda_driver")


def from_chrome_trace(trace: dict[str, Any]) -> list[TraceEvent]:
    """Records of a Chrome trace as ``torch.profiler.profile.export_chrome_trace`` writes it:
    complete events (``"ph": "X"``) with ``ts``/``dur`` in microseconds; host ops carry their
    correlation id in ``args["External id"]``, kernels the one of the op that launched them."""
    out = []
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X":
            continue
        args = ev.get("args", {})
        on_device = ev.get("cat") in _DEVICE_CATEGORIES
        ext = int(args.get("External id", 0) or 0)
        # a runtime call (cudaLaunchKernel) carries the id of the op it launches for: a link
        links = on_device or ev.get("cat") in _RUNTIME_CATEGORIES
        out.append(
            TraceEvent(
                name=ev["name"],
                start_us=float(ev["ts"]),
                dur_us=float(ev.get("dur", 0.0)),
                on_device=on_device,
                thread=ev.get("tid", 0),
                correlation=0 if links else ext,
                link=ext if links else 0,
                input_shapes=tuple(args.get("Input Dims", ())),
                input_dtypes=tuple(args.get("Input type", ())),
            )
        )
    return out
