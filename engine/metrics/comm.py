"""Communication per collective kind, read from profiler events.

On gloo, ``gloo:<op>`` events run on gloo's worker threads and span the real (asynchronous)
execution, including waiting for a late peer; with ``record_shapes=True`` they carry the input
shapes and dtypes, from which the message size follows. (``c10d::allreduce_`` events only cover
the enqueue, ~0.1 ms, so they are not used for time.) On CUDA the ``nccl:<op>`` annotations give
count and size and the NCCL kernels give the time spent on the device.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

_COLLECTIVE = re.compile(r"^(gloo|nccl):([a-z_]+)$")
_ALIASES = {"allreduce": "all_reduce", "allgather": "all_gather", "reducescatter": "reduce_scatter"}
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
        }


def _message_bytes(event: Any, unknown: set[str]) -> int:
    total = 0
    for shape, dtype in zip(event.input_shapes or [], getattr(event, "input_dtypes", []) or []):
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
    ranges (barriers excluded), and NCCL kernels (as "nccl": kernels do not name their kind).
    ``nccl:*`` annotations only cover the launch on the host, so they are not spans."""
    match = _COLLECTIVE.match(event.name)
    if match is not None:
        backend, op = match.groups()
        if backend == "gloo" and op != "barrier":
            return _ALIASES.get(op, op)
        return None
    if event.name.startswith(("ncclDevKernel", "ncclKernel")):
        return "nccl"
    return None


# regions whose collectives are not training communication (e.g. a checkpoint save's planning)
EXCLUDED_REGION = "paratune::not_training"


def summarize(events: Iterable[Any]) -> CommSummary:
    """Sum the collectives found in profiler ``events`` (``prof.events()``), leaving out those
    that start inside an ``EXCLUDED_REGION`` range."""
    events = list(events)
    excluded = [
        (ev.time_range.start, ev.time_range.end) for ev in events if ev.name == EXCLUDED_REGION
    ]
    summary = CommSummary()
    nccl_kernel_s = 0.0
    for ev in events:
        if any(lo <= ev.time_range.start <= hi for lo, hi in excluded):
            continue
        match = _COLLECTIVE.match(ev.name)
        if match is None:
            if ev.name.startswith(("ncclDevKernel", "ncclKernel")):
                nccl_kernel_s += ev.device_time_total / 1e6
            continue
        backend, op = match.groups()
        if op == "barrier":  # synchronisation only; it carries no payload
            continue
        kind = summary.kinds.setdefault(_ALIASES.get(op, op), CollectiveStats())
        kind.count += 1
        kind.bytes += _message_bytes(ev, summary.unknown_dtypes)
        if backend == "gloo":
            kind.time_s += ev.time_range.elapsed_us() / 1e6
    if nccl_kernel_s and summary.kinds:
        # kernels are not labelled with the collective that launched them: attribute device time
        # to the kinds in proportion to their bytes
        total = summary.bytes or 1
        for kind in summary.kinds.values():
            kind.time_s += nccl_kernel_s * kind.bytes / total
    return summary
