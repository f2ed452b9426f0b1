"""The `local` cluster: this machine, measured by engine.microbench (`python -m tuner
calibrate`), so that the model's datasheet rates are this machine's own.

On CPU a "device" is a rank, with cores // ranks threads; its rates depend on how many ranks
share the machine, so the profile holds one entry per measured world size.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import ConfigError
from engine.launch import launch
from engine.metrics.bandwidth import bus_factor
from tuner.machine import current
from tuner.perf.cluster import Cluster


def profile_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "paratune" / "local-cluster.json"


def measure(world_size: int, *, timeout_s: float = 300) -> dict[str, Any]:
    """Run the microbenchmarks as ``world_size`` ranks; their raw figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        res = launch(
            [sys.executable, "-m", "engine.microbench", str(out)],
            nproc=world_size,
            log_dir=Path(tmp),
            timeout_s=timeout_s,
        )
        if not res.ok:
            logs = "\n".join(p.read_text()[-2000:] for p in res.log_paths)
            raise RuntimeError(f"microbenchmarks failed: exit codes {res.returncodes}\n{logs}")
        return json.loads(out.read_text())


def fit_link(rows: list[dict]) -> tuple[float, float]:
    """(latency s, bandwidth bytes/s) of seconds = latency + bus bytes / bandwidth, over every
    kind and message size, in nccl-tests' bus conventions."""
    x = []
    for r in rows:
        whole = r["bytes"] * (r["group"] if r["kind"] == "all_gather" else 1)
        x.append(bus_factor(r["kind"], r["group"]) * whole)
    a = np.column_stack([np.ones(len(x)), np.array(x)])
    t = np.array([r["seconds"] for r in rows])
    # relative errors: small messages (latency) and large ones (bandwidth) weigh alike
    (lat, inv_bw), *_ = np.linalg.lstsq(a / t[:, None], np.ones(len(t)), rcond=None)
    return max(float(lat), 1e-7), 1.0 / max(float(inv_bw), 1e-15)


def fit_matmul(rows: list[dict], precision: str) -> tuple[float, float]:
    """(peak FLOP/s, half size): rate(n) ≈ peak · n / (n + half), fitted on 1/rate."""
    mine = [r for r in rows if r["precision"] == precision]
    n = np.array([r["size"] for r in mine], dtype=float)
    inv = 1.0 / np.array([r["flops_per_s"] for r in mine])
    # 1/rate = 1/peak + half/(peak·n): linear in (1, 1/n)
    (c0, c1), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(n), 1 / n]), inv, rcond=None)
    peak = max(r["flops_per_s"] for r in mine)
    return peak, max(float(c1 / c0), 0.0) if c0 > 0 else 0.0


def entry(raw: dict[str, Any]) -> dict[str, Any]:
    """One world size's profile from its raw figures."""
    latency, bandwidth = fit_link(raw["collectives"])
    peaks = {p: fit_matmul(raw["matmul"], p) for p in ("fp32", "bf16")}
    return {
        "threads": raw["threads"],
        "peak_tflops": {p: v[0] / 1e12 for p, v in peaks.items()},
        "matmul_half_size": {p: v[1] for p, v in peaks.items()},
        "hbm_gbps": raw["memory_bytes_per_s"] / 1e9,
        "link_gbps": bandwidth / 1e9,
        "link_latency_us": latency * 1e6,
        "raw": raw,
    }


def save(entries: dict[int, dict[str, Any]]) -> Path:
    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": current().id, "world_sizes": {str(k): v for k, v in entries.items()}}
    path.write_text(json.dumps(data, indent=1))
    return path


def measured_sizes() -> dict[int, dict[str, Any]]:
    """The saved profile's entries by world size ({} if none, or measured elsewhere)."""
    try:
        data = json.loads(profile_path().read_text())
    except (OSError, ValueError):
        return {}
    if data.get("machine") != current().id:
        return {}
    return {int(k): v for k, v in data["world_sizes"].items()}


def ensure(world_sizes: list[int], *, echo=print) -> None:
    """Measure the world sizes the saved profile lacks, keeping the ones it has."""
    entries = measured_sizes()
    missing = sorted(set(world_sizes) - set(entries))
    for w in missing:
        echo(f"measuring this machine at {w} ranks for the performance model (tuner calibrate)")
        entries[w] = entry(measure(w))
    if missing:
        save(entries)


def cluster(world_size: int, *, mem_gib: float) -> Cluster:
    """This machine as a cluster of ``world_size`` CPU ranks, from the saved profile."""
    path = profile_path()
    hint = f"run `python -m tuner calibrate calibrate.world_sizes=[{world_size}]` first"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"`cluster=local` needs this machine's profile ({path}); {hint}."
        ) from None
    machine = current()
    if data.get("machine") != machine.id:
        raise ConfigError(f"{path} was measured on another machine; {hint}.")
    e = data["world_sizes"].get(str(world_size))
    if e is None:
        raise ConfigError(
            f"`cluster=local` has no profile at world size {world_size} (measured: "
            f"{sorted(int(k) for k in data['world_sizes'])}); {hint}."
        )
    return Cluster(
        name="local",
        gpus_per_node=world_size,
        nodes=1,
        mem_gib=mem_gib,
        mem_reserve_gib=0.0,
        hbm_gbps=e["hbm_gbps"],
        intra_node_gbps=e["link_gbps"],
        inter_node_gbps=e["link_gbps"],
        intra_node_latency_us=e["link_latency_us"],
        inter_node_latency_us=e["link_latency_us"],
        peak_tflops=dict(e["peak_tflops"]),
        backend="gloo",
        # ranks x threads per rank over the cores: above 1, ranks take turns on the cores
        time_share=max(1.0, world_size * e["threads"] / machine.cores),
    )
