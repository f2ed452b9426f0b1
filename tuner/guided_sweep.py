"""What a sweep does for the model-guided search before its first trial: the cluster the
model predicts for, the runnable layouts of the space with their features, the sampler bound
to them (`sampler=model`), and the model's top K queued first (`sweep.seed_from_plan`)."""

from __future__ import annotations

import os
from collections.abc import Callable

import optuna

from tuner import space as space_mod
from tuner.config import Loaded, replace_keys, to_container
from tuner.feasibility import runnable
from tuner.guided import ModelSampler, candidates, require_throughput_first
from tuner.perf import cluster as clusters
from tuner.perf.cluster import Cluster
from tuner.perf.model import prior_for
from tuner.space import SearchSpace

StopCheck = Callable[[optuna.Study], "str | None"]


def _cluster_of(cfg: Loaded, world_sizes: list[int], echo: Callable[[str], None]):
    """Cluster per world size: this machine's measured profile (measured now where missing)
    for `cluster=local`, else the preset the sweep names."""
    data = to_container(cfg.raw.cluster) or {}
    if data.get("name") != "local":
        preset = clusters.from_dict(data)
        return lambda _world: preset
    from tuner.perf import local

    local.ensure(world_sizes, echo=echo)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cache: dict[int, Cluster] = {}

    def of(world: int) -> Cluster:
        if world not in cache:
            cache[world] = local.cluster(world, mem_gib=mem / world)
        return cache[world]

    return of


def check(cfg: Loaded) -> None:
    """What the guided search refuses, before the study is opened."""
    if str(cfg.sampler.get("_target_", "")).endswith("guided.ModelSampler"):
        require_throughput_first(list(cfg.sweep.objectives))


def prepare(
    cfg: Loaded, study: optuna.Study, space: SearchSpace, echo: Callable[[str], None]
) -> StopCheck | None:
    """Bind `sampler=model` and queue `sweep.seed_from_plan`; the sampler's stop check, if any."""
    sampler = study.sampler
    guided = isinstance(sampler, ModelSampler)
    seed_k = cfg.sweep.seed_from_plan
    if not guided and not seed_k:
        return None
    grid = space.grid() if space.size is not None else []
    worlds = sorted({_world(cfg, p) for p in grid}) or [_world(cfg, {})]
    cluster_of = _cluster_of(cfg, worlds, echo)
    cands = candidates(
        grid,
        cfg.run,
        runnable=lambda c: runnable(c, cfg.launcher),
        cluster_of=cluster_of,
        layout_key=space_mod.layout_key,
        replace=replace_keys,
        effective=space_mod.effective_params,
    )
    prior = prior_for(cluster_of(worlds[0]))
    model = sampler if guided else ModelSampler()
    model.bind(space.distributions, cands, prior=prior, cluster_of=cluster_of)
    if seed_k and not study.get_trials(deepcopy=False):
        queued = [c.params for c, _ in model.predicted()[:seed_k]]
        for params in queued:
            study.enqueue_trial(params, skip_if_exists=True)
        echo(f"queued the model's top {len(queued)} of {len(cands)} runnable layouts first")
    if guided:
        echo(f"sampler=model: {len(cands)} runnable layouts ranked by the performance model")
        return model.stop_reason
    return None


def _world(cfg: Loaded, params: dict) -> int:
    from engine.validate import resolve

    try:
        return resolve(replace_keys(cfg.run, params)).parallel.n_ranks
    except (ValueError, KeyError, TypeError):
        return cfg.run.parallel.n_ranks or 1
