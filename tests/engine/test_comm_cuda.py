"""NCCL communication per kind, from a Chrome trace of one CUDA rank (tests/engine/data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.metrics.bandwidth import add_bandwidth
from engine.metrics.comm import UNATTRIBUTED, summarize_records, timeline_kind
from engine.metrics.comm_trace import from_chrome_trace

TRACE = Path(__file__).parent / "data" / "cuda_comm_trace.json"
US = 1e-6


@pytest.fixture
def summary():
    return summarize_records(from_chrome_trace(json.loads(TRACE.read_text())))


def test_each_kind_gets_the_time_of_its_own_kernels(summary):
    kinds = summary.kinds
    assert set(kinds) == {
        "all_reduce",
        "all_gather",
        "reduce_scatter",
        "send",
        "recv",
        UNATTRIBUTED,
    }
    # (count, bytes, seconds): bytes from the nccl:* annotation, time from its kernels only
    expected = {
        "all_reduce": (1, 262144 * 4, 400 * US),  # linked to the annotation itself
        "all_gather": (1, 65536 * 2, 80 * US),  # linked to an op nested in the annotation
        "reduce_scatter": (1, 262144 * 2, 150 * US),  # a Generic kernel, tied by its link
        "send": (1, 4 * 64 * 128 * 4, 60 * US),
        "recv": (1, 4 * 64 * 128 * 4, 250 * US),
    }
    for kind, (count, nbytes, seconds) in expected.items():
        assert (kinds[kind].count, kinds[kind].bytes) == (count, nbytes), kind
        assert kinds[kind].time_s == pytest.approx(seconds), kind
    # the checkpoint's all-reduce and its 700 us kernel are left out, and the device-side copy
    # of the annotation (gpu_user_annotation) is not a second all-reduce
    assert summary.count == 5


def test_unlinked_generic_kernel_is_unattributed_with_a_reason(summary):
    lost = summary.kinds[UNATTRIBUTED]
    assert (lost.count, lost.bytes) == (0, 0)
    assert lost.time_s == pytest.approx(30 * US)
    assert summary.time_s == pytest.approx((400 + 80 + 150 + 60 + 250 + 30) * US)
    assert len(summary.notes) == 1 and "ncclDevKernel_Generic" in summary.notes[0]


def test_bandwidth_differs_by_kind_and_is_empty_when_unattributed(summary):
    kinds = summary.per_step(1)["kinds"]
    add_bandwidth(kinds, group=2)
    algbw = {k: v["algbw_gbps"] for k, v in kinds.items()}
    assert algbw[UNATTRIBUTED] is None and kinds[UNATTRIBUTED]["busbw_gbps"] is None
    assert algbw["all_reduce"] == pytest.approx(262144 * 4 / 400e-6 / 1e9)
    assert algbw["all_gather"] == pytest.approx(2 * 65536 * 2 / 80e-6 / 1e9)  # n x shard
    assert algbw["recv"] == pytest.approx(4 * 64 * 128 * 4 / 250e-6 / 1e9)
    measured = [v for v in algbw.values() if v is not None]
    assert len({round(v, 6) for v in measured}) == len(measured)  # no shared average


def test_unlinked_send_recv_kernel_is_unattributed_not_guessed():
    trace = json.loads(TRACE.read_text())
    for ev in trace["traceEvents"]:
        if ev["name"].startswith("ncclDevKernel_SendRecv"):
            del ev["args"]["External id"]
    summary = summarize_records(from_chrome_trace(trace))
    assert summary.kinds["send"].time_s == summary.kinds["recv"].time_s == 0
    assert summary.kinds["send"].bytes == 4 * 64 * 128 * 4  # the host still counts the call
    assert summary.kinds[UNATTRIBUTED].time_s == pytest.approx((30 + 60 + 250) * US)
    assert any("SendRecv" in note for note in summary.notes)


def test_named_kernel_without_link_goes_to_the_kind_it_names():
    trace = json.loads(TRACE.read_text())
    for ev in trace["traceEvents"]:
        if ev["name"].startswith("ncclDevKernel_AllGather"):
            del ev["args"]["External id"]
    summary = summarize_records(from_chrome_trace(trace))
    assert summary.kinds["all_gather"].time_s == pytest.approx(80 * US)


class _Event:
    def __init__(self, name: str) -> None:
        self.name = name


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ncclDevKernel_AllReduce_Sum_f32_RING_LL(x)", "all_reduce"),
        ("ncclKernel_AllGather_RING_LL_Sum_int8_t(x)", "all_gather"),
        ("ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL(x)", "reduce_scatter"),
        ("ncclDevKernel_SendRecv(x)", "send"),  # point-to-point: bubble, not exposed comm
        ("ncclDevKernel_Generic(x)", UNATTRIBUTED),
        ("nccl:all_reduce", None),  # the host annotation covers the launch only
        ("gloo:all_reduce", "all_reduce"),
        ("gloo:barrier", None),
    ],
)
def test_timeline_kind_names_nccl_kernels_by_collective(name, kind):
    assert timeline_kind(_Event(name)) == kind
