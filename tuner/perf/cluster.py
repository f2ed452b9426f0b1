"""A cluster as the performance model sees it: how many devices, how fast they compute and
move memory, and the links between them (conf/cluster/*.yaml).

Ranks are laid out as the engine's mesh lays them out, (pp, dp, tp) row-major with tp
innermost, filling one node after another: a group of ``size`` ranks ``stride`` apart stays
inside a node when ``size * stride`` ranks fit in one, and crosses nodes otherwise, where its
ring runs at the per-device network share.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.config import PRECISIONS, ConfigError
from engine.metrics.flops import GPU_PEAKS

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "conf" / "cluster"


@dataclass(frozen=True)
class Link:
    gbps: float  # GB/s each way, per device
    latency_s: float  # per call


@dataclass(frozen=True)
class Cluster:
    """One homogeneous cluster: ``nodes`` × ``gpus_per_node`` devices."""

    name: str = "custom"
    device_name: str = ""  # torch.cuda.get_device_name's name: peak FLOP/s from the table
    gpus_per_node: int = 8
    nodes: int = 1
    mem_gib: float = 80.0  # memory per device
    hbm_gbps: float = 3350.0  # device memory bandwidth, GB/s
    intra_node_gbps: float = 450.0  # per device, each way
    inter_node_gbps: float = 50.0  # per device, each way
    intra_node_latency_us: float = 8.0
    inter_node_latency_us: float = 15.0
    # dense peak TFLOP/s per precision; empty = engine.metrics.flops' table for device_name
    peak_tflops: dict[str, float] = field(default_factory=dict)
    mem_reserve_gib: float = 2.0  # what the runtime and allocator keep for themselves
    backend: str = "nccl"  # nccl | gloo: how a reduce-scatter runs (gloo: as an all-reduce)
    # ranks per core where a node runs more ranks than it has cores (CPU ranks): each rank's
    # host work stretches by it; 1 on GPUs, one rank per device
    time_share: float = 1.0

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def mem_bytes(self) -> float:
        """Memory a rank's tensors may use."""
        return (self.mem_gib - self.mem_reserve_gib) * 2**30

    def peak_flops(self, precision: str) -> float:
        if precision in self.peak_tflops:
            return self.peak_tflops[precision] * 1e12
        table = GPU_PEAKS.get(self.device_name, {})
        if precision not in table:
            raise ConfigError(
                f"`cluster.peak_tflops.{precision}` is not set and no peak is known for "
                f"cluster.device_name={self.device_name!r} at {precision}; set it, or name a "
                f"known device: {sorted(GPU_PEAKS)}."
            )
        return table[precision]

    def link(self, size: int, stride: int) -> Link:
        """The link a ring of ``size`` ranks ``stride`` apart runs on."""
        if size * stride <= self.gpus_per_node:
            return Link(self.intra_node_gbps, self.intra_node_latency_us * 1e-6)
        return Link(self.inter_node_gbps, self.inter_node_latency_us * 1e-6)


def group_strides(tp: int, dp: int) -> dict[str, int]:
    """Distance between neighbouring ranks of each mesh dimension's group."""
    return {"tp": 1, "dp": tp, "pp": tp * dp}


def check(cluster: Cluster) -> Cluster:
    for key in ("gpus_per_node", "nodes"):
        value = getattr(cluster, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"`cluster.{key}` must be an integer >= 1, but got {value!r}.")
    for key in (
        "mem_gib",
        "hbm_gbps",
        "intra_node_gbps",
        "inter_node_gbps",
        "intra_node_latency_us",
        "inter_node_latency_us",
    ):
        value = getattr(cluster, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"`cluster.{key}` must be a number > 0, but got {value!r}.")
    if not 0 <= cluster.mem_reserve_gib < cluster.mem_gib:
        raise ConfigError(
            f"`cluster.mem_reserve_gib` must lie in [0, cluster.mem_gib={cluster.mem_gib}), "
            f"but got {cluster.mem_reserve_gib!r}."
        )
    share = cluster.time_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not share >= 1:
        raise ConfigError(f"`cluster.time_share` must be a number >= 1, but got {share!r}.")
    if cluster.backend not in ("nccl", "gloo"):
        raise ConfigError(f"`cluster.backend` must be nccl or gloo, but got {cluster.backend!r}.")
    unknown = sorted(set(cluster.peak_tflops) - set(PRECISIONS))
    if unknown:
        raise ConfigError(
            f"`cluster.peak_tflops` has unknown precision(s) {unknown}; valid: {list(PRECISIONS)}."
        )
    return cluster


def from_dict(data: dict[str, Any]) -> Cluster:
    names = {f.name for f in dataclasses.fields(Cluster)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown cluster key(s) {unknown}; valid keys: {sorted(names)}.")
    return check(Cluster(**data))


def load(name: str) -> Cluster:
    """A preset from conf/cluster/<name>.yaml."""
    path = CLUSTER_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CLUSTER_DIR.glob("*.yaml"))
        raise ConfigError(f"`cluster={name}` is not a preset; valid: {known}.")
    return from_dict(yaml.safe_load(path.read_text()))
