from __future__ import annotations

import pytest

from engine.metrics.bandwidth import add_bandwidth, group_size, notes
from engine.metrics.comm import UNATTRIBUTED
from tests.helpers import tiny_config


def test_nccl_tests_conventions():
    kinds = {
        "all_reduce": {"bytes": 8e9, "time_s": 2.0},
        "all_gather": {"bytes": 1e9, "time_s": 1.0},  # this rank's shard of a 4e9-byte array
        "send": {"bytes": 3e9, "time_s": 1.0},
    }
    add_bandwidth(kinds, group=4)
    assert kinds["all_reduce"]["algbw_gbps"] == pytest.approx(4.0)
    assert kinds["all_reduce"]["busbw_gbps"] == pytest.approx(4.0 * 2 * 3 / 4)
    assert kinds["all_gather"]["algbw_gbps"] == pytest.approx(4.0)
    assert kinds["all_gather"]["busbw_gbps"] == pytest.approx(3.0)
    assert kinds["send"]["busbw_gbps"] == pytest.approx(3.0)


def test_bandwidth_is_left_empty_when_the_group_is_ambiguous():
    assert group_size(tiny_config(parallel={"dp": 2})) == 2
    assert group_size(tiny_config(parallel={"dp": 2, "tp": 2})) is None
    kinds = {"all_reduce": {"bytes": 1.0, "time_s": 1.0}}
    add_bandwidth(kinds, group=None)
    assert kinds["all_reduce"]["busbw_gbps"] is None


def test_gloo_reduce_scatter_caveat_is_stated_where_it_applies():
    assert notes(tiny_config(parallel={"dp": 2, "zero": 3}), "gloo")
    assert not notes(tiny_config(parallel={"dp": 2}), "gloo")
    assert not notes(tiny_config(parallel={"dp": 2, "zero": 3}), "nccl")


@pytest.mark.parametrize(
    ("kind", "factor", "gathers"),
    [
        ("_all_gather_base", 3 / 4, True),  # FSDP (torch < 2.1 names)
        ("all_gather_into_tensor", 3 / 4, True),
        ("_allgather_base", 3 / 4, True),
        ("all_gather_into_tensor_coalesced", 3 / 4, True),
        ("_reduce_scatter_base", 3 / 4, False),
        ("reduce_scatter_tensor", 3 / 4, False),
        ("reduce_scatter_tensor_coalesced", 3 / 4, False),
        ("allreduce_coalesced", 2 * 3 / 4, False),
    ],
)
def test_collective_variants_get_their_family_bus_factor(kind, factor, gathers):
    kinds = {kind: {"bytes": 1e9, "time_s": 1.0}}
    add_bandwidth(kinds, group=4)
    algbw = 4.0 if gathers else 1.0  # an all-gather's bytes are one rank's shard
    assert kinds[kind]["algbw_gbps"] == pytest.approx(algbw)
    assert kinds[kind]["busbw_gbps"] == pytest.approx(algbw * factor)


def test_unattributed_kernel_time_has_no_bandwidth_and_a_note():
    kinds = {UNATTRIBUTED: {"bytes": 0.0, "time_s": 1e-3}}
    add_bandwidth(kinds, group=2)
    assert kinds[UNATTRIBUTED]["algbw_gbps"] is None
    assert kinds[UNATTRIBUTED]["busbw_gbps"] is None
    cfg = tiny_config(parallel={"dp": 2})
    assert any(UNATTRIBUTED in n for n in notes(cfg, "nccl", kinds))
    assert not notes(cfg, "nccl", {"all_reduce": {"bytes": 1.0, "time_s": 1.0}})
