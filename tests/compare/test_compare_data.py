"""The comparison's data step on sweeps built as studies: which layouts two sweeps share,
their ratios, where the winner changes, what each knob does in each sweep."""

from __future__ import annotations

import pytest

from tests.compare.studies import add, sweep_study
from tuner.compare import data
from tuner.compare.page import render
from tuner.compare.sweeps import conditions, from_study, model_difference

# (dp, micro_batch) -> tokens/s; (2, 4) only in FP32, (1, 4) only in BF16
FP32 = {(1, 2): 1000.0, (2, 2): 1500.0, (2, 4): 1800.0, (1, 1): 400.0}
BF16 = {(1, 2): 2100.0, (2, 2): 1560.0, (1, 4): 2600.0, (1, 1): 900.0}


@pytest.fixture
def sweeps():
    a = sweep_study("fp32", FP32, fixed={"train.precision": "fp32"})
    b = sweep_study("bf16", BF16, fixed={"train.precision": "bf16"})
    return [from_study(a), from_study(b)]


def test_the_differing_fixed_setting_is_the_condition(sweeps):
    assert conditions(sweeps) == ["train.precision"]
    assert model_difference(sweeps) is None


def test_side_by_side_matches_layouts_across_precisions(sweeps):
    side = data.side_by_side(sweeps)
    shared = sorted(set(FP32) & set(BF16))
    assert side["layout"].nunique() == len(shared)
    assert len(side) == 2 * len(shared)
    for (dp, mb), row in _rows(side, "bf16").items():
        assert row["ratio"] == pytest.approx(BF16[dp, mb] / FP32[dp, mb])
        assert row["pct_of_best"] == pytest.approx(100 * BF16[dp, mb] / max(BF16.values()))
    # the reference's fastest first; precision is the condition, not a word of the layout
    ref = side[side["sweep"] == "fp32"]
    assert list(ref["tokens_per_s"]) == sorted(ref["tokens_per_s"], reverse=True)
    assert not side["layout"].str.contains("fp32|bf16").any()


def test_overlapping_intervals_are_not_distinguishable(sweeps):
    rows = _rows(data.side_by_side(sweeps), "bf16")
    # 1500 ± 3% and 1560 ± 3% overlap; 1000 and 2100 do not
    assert rows[2, 2]["distinguishable"] is False
    assert rows[1, 2]["distinguishable"] is True


def test_the_winner_changes_and_each_is_placed_in_every_sweep(sweeps):
    side = data.side_by_side(sweeps)
    won = data.winners(sweeps, side).set_index("wins in")
    assert len(won) == 2
    # fp32's winner (2, 4) was not measured in bf16; bf16's (1, 4) not in fp32
    assert won.loc["fp32", "% of best in fp32"] == pytest.approx(100)
    assert won.loc["bf16", "% of best in bf16"] == pytest.approx(100)
    assert won.isna().sum().sum() == 2
    html = render(sweeps)
    assert "The winner changes" in html


def test_the_same_winner_is_one_row():
    faster = {k: 2 * v for k, v in FP32.items()}
    sweeps = [
        from_study(sweep_study("a", FP32, fixed={"train.precision": "fp32"})),
        from_study(sweep_study("b", faster, fixed={"train.precision": "bf16"})),
    ]
    won = data.winners(sweeps, data.side_by_side(sweeps))
    assert len(won) == 1
    assert won["wins in"].iloc[0] == "a, b"
    assert "The same layout is fastest in every sweep" in render(sweeps)


def test_knob_effects_take_the_fastest_trial_per_value(sweeps):
    effects = data.knob_effects(sweeps)
    assert set(effects["knob"]) == {"parallel.dp", "train.micro_batch"}
    for name, measured in (("fp32", FP32), ("bf16", BF16)):
        for dp in (1, 2):
            row = effects[
                (effects["sweep"] == name)
                & (effects["knob"] == "parallel.dp")
                & (effects["value"] == str(dp))
            ].iloc[0]
            fastest = max(v for (d, _), v in measured.items() if d == dp)
            assert row["best_pct"] == pytest.approx(100 * fastest / max(measured.values()))
            assert row["trials"] == sum(d == dp for d, _ in measured)
    values = effects[(effects["sweep"] == "fp32") & (effects["knob"] == "train.micro_batch")]
    assert list(values["value"]) == ["1", "2", "4"]  # numeric order


def test_a_knob_searched_in_one_sweep_matches_the_other_sweeps_fixed_value():
    both = ("parallel.dp", "train.micro_batch", "train.precision")
    a = sweep_study("a", {(1, 2, "fp32"): 100.0, (1, 2, "bf16"): 150.0}, searched=both)
    b = sweep_study("b", {(1, 2): 300.0}, fixed={"train.precision": "bf16"})
    sweeps = [from_study(a), from_study(b)]
    assert conditions(sweeps) == []
    side = data.side_by_side(sweeps)
    assert set(side["tokens_per_s"]) == {150.0, 300.0}  # a's bf16 trial, not its fp32 one


def test_repeats_and_failures_are_left_out():
    study = sweep_study("a", FP32)
    add(study, {"parallel.dp": 1, "train.micro_batch": 8}, fail_reason="oom")
    repeat = {"tokens_per_s": 99999.0, "config": study.trials[0].user_attrs["result"]["config"]}
    add(study, {"parallel.dp": 1, "train.micro_batch": 2}, result=repeat, duplicate_of=0)
    sweep = from_study(study)
    assert len(sweep.measured) == len(FP32)
    assert sweep.best.tokens_per_s == max(FP32.values())


def test_different_models_are_named():
    a = sweep_study("a", FP32)
    b = sweep_study("b", FP32, fixed={"model.n_layers": 2})
    differ = model_difference([from_study(a), from_study(b)])
    assert differ is not None and "model.n_layers 4 vs 2" in differ


def test_page_has_every_figure_and_loads_nothing(sweeps):
    html = render(sweeps)
    assert html.count('class="plotly-graph-div"') == 3
    assert "<script src" not in html  # plotly.js inline, nothing fetched
    for name in ("fp32", "bf16"):
        assert name in html


def _rows(side, sweep: str) -> dict[tuple[int, int], dict]:
    """(dp, micro_batch) -> the row of ``sweep`` in ``side_by_side``."""
    import json

    out = {}
    for _, row in side[side["sweep"] == sweep].iterrows():
        key = json.loads(row["key"])
        out[key["parallel.dp"], key["train.micro_batch"]] = row.to_dict()
    return out
