"""Communication per collective kind, read from profiler events.

On gloo, ``gloo:<op>`` events run on gloo's worker threads and span the real (asynchronous)
execution, including waiting for a late peer; with ``record_shapes=True`` they carry the input
shapes and dtypes, from which the message size follows. (``c10d::allreduce_`` events only cover
the enqueue, ~0.1 ms, so they are not used for time.) On CUDA the ``nccl:<op>`` annotations give
count and size, and each NCCL kernel's device time goes to the collective that launched it
(``metrics.comm_trace``): so each kind's bandwidth is its own. A kernel that cannot be tied to
its collective is counted under ``unattributed`` (time only), never shared out by bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.metrics.comm_trace import (
    TraceEvent,
    dispatcher_kind,
    from_profiler,
    host_collective,
    is_nccl_kernel,
    kernel_kind,
)

UNATTRIBUTED = "unattributed"  # NCCL kernel time whose collective is unknown (no bytes)
# element sizes of the dtype names the profiler records
_DTYPE_BYTES = {
    "float": 4,
    "double": 8,
    "c10::Half": 2,
    "c10::BFloat16": 2,
    "long int": 8,
    "int": 4,
    "short int": 2,
    "signed char": 1,
    "unsigned char": 1,
    "bool": 1,
}


@dataclass
class CollectiveStats:
    count: int = 0
    bytes: int = 0
    time_s: float = 0.0


@dataclass
class CommSummary:
    """Totals over a profiled window, per collective kind (``kinds``) and overall."""

    kinds: dict[str, CollectiveStats] = field(default_factory=dict)
    unknown_dtypes: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)  # why some kernel time is unattributed

    @property
    def count(self) -> int:
        return sum(s.count for s in self.kinds.values())

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.kinds.values())

    @property
    def time_s(self) -> float:
        return sum(s.time_s for s in self.kinds.values())

    def per_step(self, steps: int) -> dict[str, Any]:
        """Totals divided by the number of profiled steps, as plain data for the run JSON."""
        return {
            "count": self.count / steps,
            "bytes": self.bytes / steps,
            "time_s": self.time_s / steps,
            "kinds": {
                k: {key: v / steps for key, v in asdict(s).items()}
                for k, s in sorted(self.kinds.items())
            },
            "notes": list(self.notes),
        }


def _message_bytes(event: TraceEvent, unknown: set[str]) -> int:
    total = 0
    for shape, dtype in zip(event.input_shapes, event.input_dtypes):
        if not dtype:  # not a tensor argument
            continue
        numel = 1  # a 0-d tensor has shape [] and one element
        for dim in shape:
            numel *= dim
        if dtype not in _DTYPE_BYTES:
            unknown.add(str(dtype))
            continue
        total += numel * _DTYPE_BYTES[dtype]
    return total


def timeline_kind(event: Any) -> str | None:
    """The collective kind whose execution ``event`` spans on the timeline, or None: gloo's
    ranges (barriers excluded), and NCCL kernels by the kind their name states. ``nccl:*``
    annotations only cover the launch on the host, so they are not spans. A SendRecv kernel is
    filed under ``send``: the timeline needs only to know it is point-to-point."""
    found = host_collective(event.name)
    if found is not None:
        backend, kind = found
        return kind if backend == "gloo" and kind != "barrier" else None
    if is_nccl_kernel(event.name):
        kind = kernel_kind(event.name) or UNATTRIBUTED
        return "send" if kind == "send_recv" else kind
    return None


# regions whose collectives are not training communication (e.g. a checkpoint save's planning)
EXCLUDED_REGION = "paratune::not_training"


def summarize(events: Iterable[Any]) -> CommSummary:
    """Sum the collectives found in profiler ``events`` (``prof.events()``)."""
    return summarize_records(from_profiler(events))


def summarize_records(events: list[TraceEvent]) -> CommSummary:
    """Count, bytes and time per collective kind, leaving out collectives that start inside an
    ``EXCLUDED_REGION`` range. Host ranges give count and bytes (and the time, on gloo); each
    NCCL kernel's device time goes to the kind of the host collective that launched it."""
    excluded = [(ev.start_us, ev.end_us) for ev in events if ev.name == EXCLUDED_REGION]

    def is_excluded(ev: TraceEvent) -> bool:
        return any(lo <= ev.start_us <= hi for lo, hi in excluded)

    summary = CommSummary()
    for ev in events:
        found = None if ev.on_device else host_collective(ev.name)
        if found is None or found[1] == "barrier" or is_excluded(ev):
            continue  # a barrier synchronises only; it carries no payload
        backend, kind = found
        stats = summary.kinds.setdefault(kind, CollectiveStats())
        stats.count += 1
        stats.bytes += _message_bytes(ev, summary.unknown_dtypes)
        if backend == "gloo":
            stats.time_s += ev.dur_us / 1e6
    _attribute_kernels(events, summary, is_excluded)
    return summary


def _attribute_kernels(events: list[TraceEvent], summary: CommSummary, is_excluded) -> None:
    host = [ev for ev in events if not ev.on_device]
    # ops only: runtime calls (cudaLaunchKernel) link to an op and number themselves apart
    by_correlation = {ev.correlation: ev for ev in host if ev.correlation and not ev.link}
    ranges: dict[int, list[TraceEvent]] = {}  # per thread: host ranges that name a collective
    for ev in host:
        if host_collective(ev.name) or dispatcher_kind(ev.name):
            ranges.setdefault(ev.thread, []).append(ev)
    lost: dict[str, int] = {}  # reason -> kernels
    for kernel in events:
        if not (kernel.on_device and is_nccl_kernel(kernel.name)):
            continue
        owner = _owner(by_correlation.get(kernel.link), ranges)
        named = kernel_kind(kernel.name)
        if owner is not None:
            if is_excluded(owner):
                continue
            found = host_collective(owner.name)
            kind = found[1] if found else dispatcher_kind(owner.name)
        elif is_excluded(kernel):
            continue
        elif named is not None and named != "send_recv":
            kind = named
        else:
            kind = UNATTRIBUTED
            reason = (
                "SendRecv kernels (the direction is the host's)"
                if named == "send_recv"
                else f"kernels named like {kernel.name.split('(')[0]!r}"
            )
            lost[reason] = lost.get(reason, 0) + 1
        if kind == "barrier":
            continue
        summary.kinds.setdefault(kind, CollectiveStats()).time_s += kernel.dur_us / 1e6
    for reason, n in sorted(lost.items()):
        summary.notes.append(
            f"{n} NCCL {reason} had no profiler link to the collective that launched them: "
            f"their time is counted under `{UNATTRIBUTED}`, without bytes or bandwidth."
        )


def _owner(op: TraceEvent | None, ranges: dict[int, list[TraceEvent]]) -> TraceEvent | None:
    """The host collective range behind the op that launched a kernel: the op itself when it
    names a collective, else the innermost such range on its thread that holds its start (the
    launch happens in an op nested in the annotation, e.g. ``record_param_comms``)."""
    if op is None:
        return None
    if host_collective(op.name) or dispatcher_kind(op.name):
        return op
    holding = [r for r in ranges.get(op.thread, []) if r.start_us <= op.start_us <= r.end_us]
    if not holding:
        return None
    # innermost: the latest start; the `nccl:*` annotation before a dispatcher op at a tie
    return max(holding, key=lambda r: (r.start_us, host_collective(r.name) is not None))
