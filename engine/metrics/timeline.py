"""Step-time breakdown and exposed communication, from the profiler's timeline of one rank.

The training loop marks its phases with ``record_function`` ranges (``phase()``): the step,
data loading, forward, backward and the optimizer. Every instant of a step is given to exactly
one part, by precedence:

1. ``data``          inside the data-loading phase;
2. ``comm_exposed``  a collective is in flight and this rank computes nothing (communication
                     not hidden behind compute, including waiting for a slower peer);
3. ``bubble``        a pipeline send/recv is in flight and nothing is computed (waiting for a
                     neighbouring stage; the transfer itself is part of it), or the time lies
                     outside every phase (idle between phases);
4. ``optimizer``     inside the optimizer phase (unscale, gradient norm, clipping, step);
5. ``backward``      inside a backward pass (our marker, or the autograd engine's ranges, which
                     a pipeline schedule's backward runs under; recomputation counts here);
6. ``forward``       the rest of the forward/backward phase.

"Computes" means an ``aten::`` op runs on the training thread (on CUDA also a non-NCCL kernel
runs on the device); collectives are the ``gloo:*`` ranges on gloo's threads and NCCL kernels.
So the parts add up to the marked step by construction; what the check against the
stopwatch's step time tests is that the marks and the timeline cover the step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.profiler import record_function

from engine.metrics.timing import sync

PREFIX = "paratune::"
STEP, DATA, FORWARD, BACKWARD, OPTIMIZER = "step", "data", "forward", "backward", "optimizer"
PARTS = ("forward", "backward", "optimizer", "comm_exposed", "bubble", "data")
_P2P = ("send", "recv")
_AUTOGRAD = "autograd::engine::evaluate_function"

Interval = tuple[float, float]


class Phases:
    """Marks the phases of a step on the profiler's timeline while ``active`` (the profiled
    steps; the others run unmarked). On CUDA each marked phase also waits for its device work,
    so the host-side marks cover the device time they launched."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.active = False

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.active:
            yield
            return
        with record_function(PREFIX + name):
            yield
            sync(self.device)  # no-op on CPU


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, non-overlapping intervals covering the same points."""
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if hi <= lo:
            continue
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """Intersection of two unions (each sorted and disjoint)."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """Points of ``a`` not in ``b`` (both sorted and disjoint)."""
    out, j = [], 0
    for lo, hi in a:
        while j < len(b) and b[j][1] <= lo:
            j += 1
        k, cur = j, lo
        while k < len(b) and b[k][0] < hi:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            k += 1
        if cur < hi:
            out.append((cur, hi))
    return out


def length(intervals: list[Interval]) -> float:
    return sum(hi - lo for lo, hi in intervals)


@dataclass
class Timeline:
    """One rank's profiled steps, reduced to unions of intervals (microseconds)."""

    steps: list[Interval] = field(default_factory=list)
    phases: dict[str, list[Interval]] = field(default_factory=dict)
    compute: list[Interval] = field(default_factory=list)
    comm: dict[str, list[Interval]] = field(default_factory=dict)  # per collective kind

    @classmethod
    def from_events(cls, events: Iterable[Any], kind_of) -> Timeline:
        """``kind_of(event)``: the collective kind of an event, or None (metrics.comm)."""
        events = list(events)
        marks = [ev for ev in events if ev.name == PREFIX + STEP]
        if not marks:
            return cls()
        main = marks[0].thread  # the training thread: the one that marks the steps
        raw: dict[str, list[Interval]] = {}
        compute, comm = [], {}
        for ev in events:
            span = (ev.time_range.start, ev.time_range.end)
            kind = kind_of(ev)
            if kind is not None:
                comm.setdefault(kind, []).append(span)
            elif _is_device_kernel(ev):
                compute.append(span)
            elif ev.thread != main:
                continue
            elif ev.name.startswith(PREFIX):
                raw.setdefault(ev.name[len(PREFIX) :], []).append(span)
            elif ev.name.startswith(_AUTOGRAD):
                raw.setdefault(BACKWARD, []).append(span)
            elif ev.name.startswith("aten::"):
                compute.append(span)
        return cls(
            steps=union(raw.pop(STEP, [])),
            phases={k: union(v) for k, v in raw.items()},
            compute=union(compute),
            comm={k: union(v) for k, v in comm.items()},
        )

    def breakdown(self) -> dict[str, float]:
        """Seconds per part (PARTS), summed over the marked steps."""
        step = self.steps
        take = {}
        left = step
        data = intersect(left, self.phases.get(DATA, []))
        take["data"], left = data, subtract(left, data)
        idle = subtract(left, self.compute)  # nothing computed here
        collectives = union(s for k, v in self.comm.items() if k not in _P2P for s in v)
        take["comm_exposed"] = intersect(idle, collectives)
        p2p = union(s for k, v in self.comm.items() if k in _P2P for s in v)
        idle = subtract(idle, collectives)
        phased = union(s for k in (FORWARD, BACKWARD, OPTIMIZER) for s in self.phases.get(k, []))
        bubble = union(intersect(idle, p2p) + subtract(idle, phased))
        left = subtract(subtract(left, take["comm_exposed"]), bubble)
        take["bubble"] = bubble
        for name in (OPTIMIZER, BACKWARD, FORWARD):
            part = intersect(left, self.phases.get(name, []))
            take[name], left = part, subtract(left, part)
        # time inside a step but outside every phase (none by the rules above) would be lost
        take["bubble"] = union(take["bubble"] + left)
        return {name: length(take[name]) / 1e6 for name in PARTS}

    def exposed_by_kind(self) -> dict[str, float]:
        """Seconds each kind is in flight while nothing is computed (overlapping kinds each
        count their own exposed time)."""
        idle = subtract(subtract(self.steps, self.phases.get(DATA, [])), self.compute)
        return {k: length(intersect(idle, v)) / 1e6 for k, v in self.comm.items()}

    def per_step(self) -> tuple[list[float], list[float]]:
        """Per marked step: seconds some collective is in flight, and seconds of exposed
        communication (as in ``breakdown``) — the spread behind the means; a median resists
        one slow step."""
        every = union(s for v in self.comm.values() for s in v)
        collectives = union(s for k, v in self.comm.items() if k not in _P2P for s in v)
        busy, exposed = [], []
        for step in self.steps:
            busy.append(length(intersect([step], every)) / 1e6)
            flight = subtract(intersect([step], collectives), self.phases.get(DATA, []))
            exposed.append(length(subtract(flight, self.compute)) / 1e6)
        return busy, exposed

    @property
    def step_s(self) -> float:
        return length(self.steps) / 1e6


def _is_device_kernel(ev: Any) -> bool:
    device = getattr(ev, "device_type", None)
    return device is not None and str(device).endswith("CUDA") and not _is_nccl(ev.name)


def _is_nccl(name: str) -> bool:
    return name.startswith(("ncclDevKernel", "ncclKernel"))
