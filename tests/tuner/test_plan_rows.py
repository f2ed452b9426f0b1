"""The planner's rows as the JSON and the page read them: ``PlanRow.as_dict`` (shallow) and
the frame built column by column hold exactly what ``dataclasses.asdict`` and a frame of one
dict per row hold, for every layout of a plan, feasible or not."""

from __future__ import annotations

import dataclasses

import pandas as pd

from tuner.config import load, to_container
from tuner.layout_name import layout_name
from tuner.perf.model import prior_for
from tuner.planner.command import resolve_cluster
from tuner.planner.layouts import layouts
from tuner.planner.page import plan_frame
from tuner.planner.rank import PlanRow, rank_all
from tuner.planner.show import describe
from tuner.schema import PlanOptions


def _rows():
    cfg = load(["model=llama-1b", "cluster=h100-sxm", "train.global_batch=64"])
    cluster = resolve_cluster(cfg)
    options = PlanOptions(**to_container(cfg.raw.plan))
    return rank_all(layouts(cfg.run, cluster.world_size, options), cluster, prior_for(cluster))


def test_rows_as_dicts_and_as_a_frame_hold_every_field() -> None:
    rows = _rows()
    reasons = {r.reason.split(" ")[0] for r in rows if not r.feasible}
    assert any(r.feasible for r in rows) and len(reasons) > 1  # refused for several reasons
    assert [r.as_dict() for r in rows] == [dataclasses.asdict(r) for r in rows]
    df = plan_frame(rows)
    by_row = pd.DataFrame([dataclasses.asdict(r) for r in rows])
    assert df[list(by_row.columns)].equals(by_row)
    assert (df[list(by_row.columns)].dtypes == by_row.dtypes).all()
    assert plan_frame([]).empty


def test_a_planned_layout_is_named_as_the_sweep_that_measures_it_names_it() -> None:
    cfg = load(["model=llama-1b", "cluster=h100-sxm", "train.global_batch=64"])
    options = PlanOptions(**to_container(cfg.raw.plan))
    seen = 0
    for run in layouts(cfg.run, 16, options):
        row = PlanRow.of(run, feasible=True)
        assert describe(row) == layout_name(run)
        seen += 1
        if seen == 500:
            break
    assert seen == 500
