"""Stage placement and per-rank parameter counts, which the planner asks for once per layout
and so are cached: the cache is keyed by the model's values, never by the object."""

from __future__ import annotations

from engine.shapes import stage_params
from engine.stages import rank_params, representative_ranks, stage_sizes
from tests.helpers import tiny_config


def _by_hand(cfg, pp_rank: int) -> int:
    """Ψ of a one-stage-per-rank pipeline rank, from engine.shapes directly."""
    m, p = cfg.model, cfg.parallel
    sizes = stage_sizes(m, p.pp)
    last = pp_rank == p.pp - 1
    return stage_params(m, p.tp, layers=sizes[pp_rank], first=pp_rank == 0, last=last)


def test_rank_params_follow_a_model_changed_in_place() -> None:
    cfg = tiny_config(parallel={"pp": 2}, train={"micro_batch": 2})
    before = [rank_params(cfg, r) for r in range(2)]
    assert before == [_by_hand(cfg, r) for r in range(2)]
    cfg.model.d_model *= 2  # the same object, another shape: the counts must follow
    after = [rank_params(cfg, r) for r in range(2)]
    assert after == [_by_hand(cfg, r) for r in range(2)] and after != before


def test_representative_ranks_hold_the_ends_and_the_most_loaded() -> None:
    cfg = tiny_config(model={"n_layers": 6}, parallel={"pp": 4}, train={"micro_batch": 1})
    sizes = stage_sizes(cfg.model, 4)
    ranks = representative_ranks(cfg.model, cfg.parallel)
    assert ranks[0] == 0 and ranks[-1] == 3 and ranks == sorted(ranks)
    assert max(sizes[r] for r in ranks) == max(sizes)
