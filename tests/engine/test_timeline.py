"""The step-time breakdown: interval arithmetic and the precedence of the parts, on timelines
whose answer is known by hand."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.metrics import comm
from engine.metrics.timeline import PARTS, PREFIX, Timeline, intersect, subtract, union

MAIN, GLOO = 1, 2


@dataclass
class _Range:
    start: float
    end: float


@dataclass
class _Event:
    """The fields of a profiler event the timeline reads (times in microseconds)."""

    name: str
    start: float
    end: float
    thread: int = MAIN
    device_type: str = "DeviceType.CPU"

    @property
    def time_range(self) -> _Range:
        return _Range(self.start, self.end)


def _mark(name: str, start: float, end: float) -> _Event:
    return _Event(PREFIX + name, start, end)


def test_interval_arithmetic() -> None:
    a = union([(0, 10), (5, 12), (20, 30), (30, 31), (40, 40)])
    assert a == [(0, 12), (20, 31)]  # overlaps and touching ranges merge; empty ones go
    b = [(2, 4), (11, 25)]
    assert intersect(a, b) == [(2, 4), (11, 12), (20, 25)]
    assert subtract(a, b) == [(0, 2), (4, 11), (25, 31)]
    assert subtract(a, []) == a and intersect(a, []) == []


def _step(*events: _Event) -> Timeline:
    return Timeline.from_events([_mark("step", 0, 100), *events], comm.timeline_kind)


def test_overlapped_communication_is_not_exposed() -> None:
    t = _step(
        _mark("data", 0, 5),
        _mark("forward", 5, 40),
        _Event("aten::mm", 5, 40),
        _mark("backward", 40, 80),
        _Event("aten::mm", 40, 70),  # compute until 70 ...
        _Event("gloo:allreduce", 60, 85, thread=GLOO),  # ... while the all-reduce runs from 60
        _mark("optimizer", 85, 100),
        _Event("aten::add_", 85, 98),
    )
    parts = t.breakdown()
    assert set(parts) == set(PARTS)
    ms = {k: round(v * 1e6) for k, v in parts.items()}  # microseconds
    # 60-70 overlaps compute; 70-85 is exposed (70-80 inside backward, 80-85 between phases)
    assert ms == {
        "data": 5,
        "forward": 35,
        "backward": 30,
        "comm_exposed": 15,
        "optimizer": 15,  # the 98-100 gap inside the optimizer phase stays the optimizer's
        "bubble": 0,
    }
    assert sum(parts.values()) == pytest.approx(t.step_s)
    assert t.exposed_by_kind() == {"all_reduce": pytest.approx(15e-6)}


def test_pipeline_waits_are_bubble_and_backward_is_found_by_autograd_ranges() -> None:
    t = _step(
        _mark("data", 0, 2),
        _mark("forward", 2, 96),  # a pipeline schedule: one phase for all of it
        _Event("gloo:recv", 2, 30, thread=GLOO),  # waiting for the previous stage
        _Event("aten::mm", 30, 50),
        _Event("autograd::engine::evaluate_function: MmBackward0", 55, 90),
        _Event("aten::mm", 56, 89),
        _Event("gloo:send", 90, 91, thread=GLOO),
        _mark("optimizer", 96, 100),
        _Event("aten::mul_", 96, 100),
    )
    ms = {k: round(v * 1e6) for k, v in t.breakdown().items()}
    assert ms["bubble"] == 28 + 1  # the recv wait 2-30 and the send 90-91, nothing computed
    assert ms["backward"] == 35  # 55-90, the autograd engine's range
    assert ms["forward"] == 20 + 5 + 5  # 30-50 compute, and the phase's own gaps 50-55, 91-96
    assert ms["comm_exposed"] == 0 and ms["data"] == 2 and ms["optimizer"] == 4
    assert sum(ms.values()) == 100


def test_time_outside_every_phase_is_idle_and_nccl_kernels_are_communication() -> None:
    t = _step(
        _mark("forward", 10, 50),
        _Event("aten::mm", 10, 50),
        _Event("gemm_kernel", 20, 60, thread=7, device_type="DeviceType.CUDA"),  # device compute
        _Event("ncclDevKernel_AllReduce", 55, 80, thread=8, device_type="DeviceType.CUDA"),
    )
    ms = {k: round(v * 1e6) for k, v in t.breakdown().items()}
    # 50-60: device computes (outside a phase: idle-time bucket); 60-80 exposed NCCL; the rest
    # of the step outside any phase is idle
    assert ms["comm_exposed"] == 20
    assert ms["forward"] == 40
    assert ms["bubble"] == 10 + 10 + 20  # 0-10, 50-60, 80-100
    assert sum(ms.values()) == 100
