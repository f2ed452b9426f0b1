"""Where the layers go under pipeline parallelism, in plain Python (no torch): the planner and
the memory model place stages without building anything; engine.parallel.pipeline builds them.

The model is cut into ``pp * virtual_stages`` stages of consecutive blocks, balanced by FLOPs
per token: a block counts 1, the output head counts its matmul's share (vocab * d_model against
a block's weights), the embedding lookup counts 0.
"""

from __future__ import annotations

import functools

from engine.config import PP_SCHEDULES, ModelConfig, ParallelConfig, RunConfig
from engine.shapes import kv_width, stage_params
from engine.validate import stages_per_rank as stages_per_rank  # re-exported


def n_stages(parallel: ParallelConfig) -> int:
    """Pipeline stages of the whole model (1 without pipeline parallelism)."""
    if parallel.pp == 1:
        return 1
    return parallel.pp * stages_per_rank(parallel.pp_schedule, parallel.pp_virtual_stages)


def stage_costs(cfg: ModelConfig) -> tuple[float, float]:
    """(block, head) cost in FLOPs-per-token units of one block."""
    d, kv = cfg.d_model, kv_width(cfg)
    block = 2 * d * d + 2 * d * kv + (3 if cfg.mlp == "swiglu" else 2) * d * cfg.d_ff
    block += 2 * cfg.seq_len * cfg.d_model  # attention scores: 2·T·d per token (PaLM's 12LHQT / 6)
    return 1.0, cfg.padded_vocab_size * cfg.d_model / block  # the head computes padded rows too


def split_layers(cfg: ModelConfig, n_stages: int) -> list[list[int]]:
    """Consecutive layer ranges per stage, minimising the most loaded stage (head included)."""
    return [list(r) for r in _split(cfg.n_layers, stage_costs(cfg)[1], n_stages)]


@functools.cache  # the planner asks for the same split for many layouts
def _split(n: int, head: float, n_stages: int) -> tuple[range, ...]:
    bounds = [0, *_cuts(n, head, n_stages)]
    return tuple(range(bounds[i], bounds[i + 1]) for i in range(n_stages))


def stage_sizes(cfg: ModelConfig, n_stages: int) -> tuple[int, ...]:
    """Blocks per stage (what the planner needs of ``split_layers``, without the lists)."""
    return _sizes(cfg.n_layers, stage_costs(cfg)[1], n_stages)


@functools.cache  # _split's, counted: asked for as often
def _sizes(n: int, head: float, n_stages: int) -> tuple[int, ...]:
    return tuple(len(r) for r in _split(n, head, n_stages))


def representative_ranks(cfg: ModelConfig, parallel: ParallelConfig) -> list[int]:
    """Pipeline ranks whose loads differ enough to hold the extremes: the first (embedding),
    the last (head) and one with the most blocks; the others hold fewer or as many blocks."""
    if parallel.pp == 1:
        return [0]
    p = parallel
    sizes = stage_sizes(cfg, n_stages(p))
    return list(_representative(sizes, p.pp, p.pp_schedule, p.pp_virtual_stages))


@functools.cache  # a function of the stage sizes and placement, shared by many layouts
def _representative(sizes: tuple[int, ...], pp: int, schedule: str, v: int) -> tuple[int, ...]:
    def blocks(r: int) -> int:
        return sum(sizes[s] for s in local_stage_ids(r, pp, schedule, v))

    most = max(range(pp), key=blocks)
    return tuple(sorted({0, pp - 1, most}))


def _cuts(n: int, head: float, n_stages: int) -> tuple[int, ...]:
    # dynamic programming over (first unplaced layer, stages left): the partition with the
    # smallest most-loaded stage, ties broken by the smallest sum of squared loads (evenness)
    @functools.cache
    def solve(start: int, stages_left: int) -> tuple[float, float, tuple[int, ...]]:
        if stages_left == 1:
            load = (n - start) + head
            return load, load * load, (n,)
        best = (float("inf"), float("inf"), ())
        for end in range(start + 1, n - stages_left + 2):
            rest_max, rest_sq, cuts = solve(end, stages_left - 1)
            here = end - start
            candidate = (max(here, rest_max), here * here + rest_sq, (end, *cuts))
            best = min(best, candidate)
        return best

    return solve(0, n_stages)[2]


def local_stage_ids(pp_rank: int, pp: int, schedule: str, virtual_stages: int) -> list[int]:
    """The stages pipeline rank ``pp_rank`` runs: one, several looped (stages r, r+pp, ...) or
    two in a V (stages r and 2pp-1-r)."""
    placement = PP_SCHEDULES[schedule]
    if placement == "single":
        return [pp_rank]
    if placement == "v":
        return [pp_rank, 2 * pp - 1 - pp_rank]
    return [pp_rank + k * pp for k in range(virtual_stages)]


def coordinates(rank: int, parallel: ParallelConfig) -> tuple[int, int, int]:
    """(pp_rank, dp_rank, tp_rank) of a global rank in the (pp, dp, tp) row-major layout."""
    tp_rank = rank % parallel.tp
    dp_rank = (rank // parallel.tp) % parallel.dp
    pp_rank = rank // (parallel.tp * parallel.dp)
    return pp_rank, dp_rank, tp_rank


def rank_params(cfg: RunConfig, pp_rank: int) -> int:
    """Ψ: parameters pipeline rank ``pp_rank`` holds before data-parallel sharding."""
    p, total = cfg.parallel, n_stages(cfg.parallel)
    ids = [0] if total == 1 else local_stage_ids(pp_rank, p.pp, p.pp_schedule, p.pp_virtual_stages)
    return _rank_params(tuple(vars(cfg.model).items()), p.tp, total, tuple(ids))


# a function of the model's fields (plain values, so a key by value) and the stages held:
# the planner asks for the same few for thousands of layouts
@functools.cache
def _rank_params(model: tuple, tp: int, total: int, ids: tuple[int, ...]) -> int:
    m = ModelConfig(**dict(model))
    sizes = (m.n_layers,) if total == 1 else stage_sizes(m, total)
    return sum(stage_params(m, tp, layers=sizes[s], first=s == 0, last=s == total - 1) for s in ids)
