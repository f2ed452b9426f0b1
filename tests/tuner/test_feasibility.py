"""Memory verdicts before launch, and the margin an unforeseen out-of-memory adds."""

from __future__ import annotations

import optuna
import pytest

from engine.units import GIB, MIB
from engine.validate import validate
from tests.helpers import tiny_config
from tuner.config import LauncherConfig
from tuner.feasibility import MARGIN_ATTR, Infeasible, after_oom, predicted_need, runnable


def _cfg(**train):
    return tiny_config(train={"global_batch": 8, **train}, device="cpu")


def test_capacity_is_shared_by_the_ranks():
    one, two = _cfg(micro_batch=4), tiny_config(parallel={"dp": 2}, device="cpu")
    need = predicted_need(validate(one), reserve_gib=0)
    launcher = LauncherConfig(mem_limit_gib=1.5 * need / GIB, mem_reserve_gib=0)
    runnable(one, launcher)
    with pytest.raises(Infeasible, match="shared by 2 ranks") as err:
        runnable(two, launcher)
    assert err.value.reason == "memory"


def test_an_unforeseen_out_of_memory_widens_the_margin_for_the_rest():
    cfg = validate(_cfg(micro_batch=4))
    need = predicted_need(cfg, reserve_gib=0)
    launcher = LauncherConfig(mem_limit_gib=1.1 * need / GIB, mem_reserve_gib=0)
    study = optuna.create_study()
    runnable(cfg, launcher, margin=1.0)  # fits before
    note = after_oom(study, cfg, launcher, 1.0)
    assert f"{need / GIB:.2f} GiB" in note
    margin = study.user_attrs[MARGIN_ATTR]
    assert margin > 1.1
    with pytest.raises(Infeasible, match="margin"):
        runnable(cfg, launcher, margin=margin)


def test_the_reserve_counts_per_rank():
    cfg = validate(_cfg(micro_batch=1))
    assert predicted_need(cfg, reserve_gib=0.5) - predicted_need(cfg, reserve_gib=0) == 0.5 * GIB
    assert predicted_need(cfg, reserve_gib=0) > MIB
