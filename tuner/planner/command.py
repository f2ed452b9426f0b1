"""`python -m tuner plan` and `python -m tuner calibrate`: the glue between the composed config,
the performance model and what the user reads."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from engine.config import ConfigError
from tuner.config import Loaded, to_container
from tuner.perf import cluster as clusters
from tuner.perf.cluster import Cluster
from tuner.perf.errors import ErrorBands, load_bands
from tuner.perf.model import Coefficients, prior_for
from tuner.planner.layouts import layouts
from tuner.planner.rank import rank_all
from tuner.planner.show import infeasible_summary, table, verify_commands


def _machine_mem_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def resolve_cluster(cfg: Loaded) -> Cluster:
    """The `cluster` section as a Cluster: a preset (overrides applied) or this machine."""
    data = to_container(cfg.raw.cluster) or {}
    if data.get("name") == "local":
        from tuner.perf import local

        world = cfg.raw.plan.world_size or 2
        extra = sorted(set(data) - {"name"})
        if extra:
            raise ConfigError(
                f"`cluster=local` is measured, not set: remove {['cluster.' + k for k in extra]}"
                " or plan for a preset cluster."
            )
        # the ranks share this machine's memory
        return local.cluster(world, mem_gib=_machine_mem_gib() / world)
    return clusters.from_dict(data)


def cmd_plan(cfg: Loaded) -> int:
    from tuner.schema import PlanOptions

    options = PlanOptions(**to_container(cfg.raw.plan))
    cluster = resolve_cluster(cfg)
    world = options.world_size or cluster.world_size
    if world > cluster.world_size:
        raise ConfigError(
            f"`plan.world_size`={world} exceeds the cluster's {cluster.world_size} devices "
            f"(cluster.nodes={cluster.nodes} x cluster.gpus_per_node={cluster.gpus_per_node})."
        )
    started = time.perf_counter()
    coeffs: Coefficients = prior_for(cluster)
    bands = ErrorBands()  # the prior's error is not measured
    if options.calibrate_from:
        from tuner.planner.calibration import fit_to_sweeps

        fitted = fit_to_sweeps(cfg, options.calibrate_from, cluster)
        coeffs = fitted.coeffs
        # the held-out error of this fitting procedure where recorded, else the fit's residuals
        bands = load_bands(cluster) if load_bands(cluster).by_kind else fitted.bands
        print(fitted.describe())
    rows = rank_all(layouts(cfg.run, world, options), cluster, coeffs)
    elapsed = time.perf_counter() - started
    feasible = [r for r in rows if r.feasible]
    print(
        f"{cfg.run.model.name} on {cluster.name} ({world} devices), global batch "
        f"{cfg.run.train.global_batch}: {len(rows)} layouts, {len(feasible)} can run "
        f"({elapsed:.1f} s); coefficients: {coeffs.source}; error: {bands.describe()}"
    )
    print(table(feasible[: options.top_k], bands))
    print(infeasible_summary([r for r in rows if not r.feasible]))
    print(verify_commands(cfg, feasible[: options.top_k], world))
    if options.out:
        from tuner.outputs import atomic_write_text

        # a JSON list, one layout per line: json's C encoder writes only the compact form
        # (the indented one takes its pure-Python encoder, several times slower on 60k rows)
        lines = [json.dumps(r.as_dict() | {"error_band": bands.for_row(r)}) for r in rows]
        atomic_write_text(Path(options.out), "[\n" + ",\n".join(lines) + "\n]\n")
        print(f"every layout: {options.out}")
    from tuner.planner.page import write_page

    html = Path(options.html) if options.html else _default_page(cfg, cluster, world)
    write_page(
        html,
        rows=rows,
        top_k=options.top_k,
        cfg=cfg,
        cluster=cluster,
        world=world,
        bands=bands,
        coeffs=coeffs,
    )
    print(f"open {html.resolve()} in a browser")
    return 0


def _default_page(cfg: Loaded, cluster: Cluster, world: int) -> Path:
    name = f"{cfg.run.model.name}-{cluster.name}-{world}.html"
    return Path(cfg.sweep.out_dir) / "plans" / name


def cmd_calibrate(cfg: Loaded) -> int:
    from tuner.perf import local

    sizes = list(cfg.raw.calibrate.world_sizes)  # checked with the config (TUNER_RULES)
    entries = {}
    for w in sizes:
        started = time.perf_counter()
        entries[w] = local.entry(local.measure(w))
        e = entries[w]
        print(
            f"{w} ranks x {e['threads']} threads: matmul peak fp32 "
            f"{e['peak_tflops']['fp32'] * 1e3:.0f} GFLOP/s, bf16 "
            f"{e['peak_tflops']['bf16'] * 1e3:.0f} GFLOP/s; memory {e['hbm_gbps']:.1f} GB/s; "
            f"collectives {e['link_latency_us']:.0f} us + bytes / {e['link_gbps']:.2f} GB/s "
            f"({time.perf_counter() - started:.0f} s)"
        )
    # world sizes measured before and not asked for now are kept
    path = local.save({**local.measured_sizes(), **entries})
    print(f"wrote {path}; plan with cluster=local plan.world_size=N")
    return 0
