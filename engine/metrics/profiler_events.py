"""The profiler's events as light records, read straight from its raw (kineto) results.

``prof.events()`` builds a ``FunctionEvent`` per op: it attributes memory records to each op,
reads every input's strides and links the op tree. For the few thousand ops of two profiled
steps of a small model that is most of a second per rank, paid by every trial. The
communication summary (``metrics.comm``) and the step timeline (``metrics.timeline``) need none
of it: each event's name, interval, thread, device, correlation ids, input shapes and dtypes,
which the raw results hold. The filtering and naming are the profiler's own (``_filter_name``,
``_rewrite_name``), and a device-runtime event takes the thread of the op that launched it, as
in ``events()``, so these records carry the same values for every attribute they have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.autograd import DeviceType
from torch.autograd.profiler_util import _filter_name, _rewrite_name


@dataclass(frozen=True, slots=True)
class Span:
    start: float  # microseconds since the trace started
    end: float


@dataclass(slots=True)
class Event:
    """The attributes of ``FunctionEvent`` that metrics.comm and metrics.timeline read."""

    name: str
    time_range: Span
    thread: int
    device_type: DeviceType
    id: int  # the op's correlation id
    linked_correlation_id: int  # device activity: the id of the host op that launched it
    input_shapes: list
    input_dtypes: list


def read_events(prof: Any) -> list[Event]:
    """The events of a finished ``torch.profiler.profile``, ordered as ``prof.events()``."""
    result = prof.profiler.kineto_results
    origin = result.trace_start_ns()
    out: list[Event] = []
    is_async: dict[int, bool] = {}  # id(record) -> the op started and ended on other threads
    host_threads: dict[int, int] = {}  # correlation id of a synchronous host op -> its thread
    for ev in result.events():
        name = ev.name()
        if _filter_name(name) or getattr(ev, "is_hidden_event", lambda: False)():
            continue
        on_host = ev.device_type() == DeviceType.CPU
        if on_host and ev.linked_correlation_id() == 0 and not _is_async(ev):
            host_threads[ev.correlation_id()] = ev.start_thread_id()
        record = Event(
            name=_rewrite_name(name=name, with_wildcard=True),
            time_range=Span((ev.start_ns() - origin) / 1000, (ev.end_ns() - origin) / 1000),
            thread=ev.start_thread_id(),
            device_type=ev.device_type(),
            id=ev.correlation_id(),
            linked_correlation_id=ev.linked_correlation_id(),
            input_shapes=ev.shapes(),
            input_dtypes=ev.dtypes(),
        )
        out.append(record)
        is_async[id(record)] = _is_async(ev)
    for e in out:  # a kernel launch nests under the op that launched it, as in events()
        if e.linked_correlation_id > 0 and e.device_type == DeviceType.CPU:
            e.thread = host_threads.get(e.linked_correlation_id, e.thread)
    out.sort(key=lambda e: (e.time_range.start, -e.time_range.end))
    sync = [e for e in out if e.device_type == DeviceType.CPU and not is_async[id(e)]]
    dropped = _nested_repeats(sync)
    return [e for e in out if id(e) not in dropped]


def _nested_repeats(events: list[Event]) -> set[int]:
    """ids of the ops ``events()`` leaves out: an op that is the only child of an op of the same
    name (``EventList._remove_dup_nodes``), in the nesting ``_populate_cpu_children`` finds
    (per thread, an interval inside another's)."""
    parent: dict[int, Event | None] = {}
    children: dict[int, list[Event]] = {id(e): [] for e in events}
    by_thread: dict[int, list[Event]] = {}
    for e in events:
        by_thread.setdefault(e.thread, []).append(e)
    for thread_events in by_thread.values():  # already ordered by (start, -end)
        stack: list[Event] = []
        for e in thread_events:
            parent[id(e)] = None
            while stack:
                top = stack[-1]
                if (
                    e.time_range.start >= top.time_range.end
                    or e.time_range.end > top.time_range.end
                ):
                    stack.pop()
                    continue
                children[id(top)].append(e)
                parent[id(e)] = top
                break
            stack.append(e)
    dropped: set[int] = set()
    while True:  # the same passes as _remove_dup_nodes, until nothing changes
        gone = set()
        for e in events:
            up = parent[id(e)]
            if id(e) in dropped or up is None:
                continue
            if up.name == e.name and len(children[id(up)]) == 1:
                children[id(up)] = children[id(e)]
                for child in children[id(e)]:
                    parent[id(child)] = up
                gone.add(id(e))
        if not gone:
            return dropped
        dropped |= gone


def _is_async(ev: Any) -> bool:
    return ev.is_async() or ev.start_thread_id() != ev.end_thread_id()
