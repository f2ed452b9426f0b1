"""The step-time model's arithmetic and its fit, without measurements (their agreement with
measured steps is bench/planner_accuracy.py's job)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from engine.config import ConfigError, RunConfig
from engine.metrics.volumes import n_micro
from tests.helpers import REPO, tiny_config
from tuner.perf import cluster as clusters
from tuner.perf.features import FEATURES, bubble, features, span
from tuner.perf.model import GPU_PRIOR, Coefficients, fit, predict

LLAMA_7B = yaml.safe_load((REPO / "conf/model/llama-7b.yaml").read_text())


def _llama(parallel: dict, **train) -> RunConfig:
    return tiny_config(
        model=LLAMA_7B,
        parallel=parallel,
        train={"global_batch": 256, "micro_batch": 1, "precision": "bf16", **train},
    )


@pytest.mark.parametrize("name", ["a100-80gb", "h100-sxm", "h200"])
def test_presets_load_and_know_their_peak(name):
    c = clusters.load(name)
    assert c.world_size == 8 and c.peak_flops("bf16") > 3e14


def test_unknown_preset_and_bad_values_are_refused():
    with pytest.raises(ConfigError, match="valid:"):
        clusters.load("nope")
    with pytest.raises(ConfigError, match=r"cluster\.nodes"):
        clusters.from_dict({"nodes": 0})
    with pytest.raises(ConfigError, match="unknown cluster key"):
        clusters.from_dict({"gpus": 8})


def test_groups_inside_a_node_use_its_links():
    c = dataclasses.replace(clusters.load("h100-sxm"), nodes=4)
    assert c.link(8, 1).gbps == c.intra_node_gbps  # tp 8
    assert c.link(4, 8).gbps == c.inter_node_gbps  # dp 4 over tp 8


def test_tensor_parallel_across_nodes_is_predicted_slower():
    c = dataclasses.replace(clusters.load("h100-sxm"), nodes=2)
    coeffs = Coefficients()
    inside = predict(_llama({"tp": 8, "dp": 2}), c, coeffs)
    across = predict(_llama({"tp": 16, "dp": 1}), c, coeffs)
    assert across.step_time_s > inside.step_time_s
    assert across.parts["comm_tp"] > 2 * inside.parts["comm_tp"]


def test_pipeline_bubble_shrinks_with_interleaving_and_zero_bubble():
    c = clusters.load("h100-sxm")
    coeffs = Coefficients()
    steps = {
        s: predict(
            _llama({"pp": 4, "dp": 2, "pp_schedule": s, "pp_virtual_stages": 2}), c, coeffs
        ).step_time_s
        for s in ("1f1b", "interleaved_1f1b", "zbv_zero_bubble")
    }
    assert steps["zbv_zero_bubble"] < steps["interleaved_1f1b"] < steps["1f1b"]


def _varied_layouts() -> list[RunConfig]:
    return [
        _llama({"dp": dp, "tp": tp, "pp": pp, "zero": zero}, micro_batch=mb)
        for dp, tp, pp in ((8, 1, 1), (4, 2, 1), (2, 4, 1), (1, 8, 1), (2, 2, 2), (4, 1, 2))
        for zero in (0, 1, 2, 3)
        for mb in (1, 2, 4)
        if not (zero == 1 and (tp > 1 or pp > 1))
    ]


def test_fit_recovers_coefficients_that_generated_the_steps():
    c = clusters.load("h100-sxm")
    true = {k: v * (1.5 if i % 2 else 0.7) for i, (k, v) in enumerate(GPU_PRIOR.items())}
    layouts = _varied_layouts()
    measured = [(cfg, sum(true[k] * v for k, v in features(cfg, c).items())) for cfg in layouts]
    result = fit(measured, lambda _: c, prior=Coefficients(), prior_weight=1e-4)
    assert result.mape < 1e-3
    for cfg, seconds in measured:
        assert predict(cfg, c, result.coeffs).step_time_s == pytest.approx(seconds, rel=1e-2)


def test_features_cover_every_coefficient():
    x = features(_llama({"dp": 8, "zero": 3}), clusters.load("h100-sxm"))
    assert set(x) == set(FEATURES)
    assert x["comm_dp3"] > 0 and x["comm_dp0"] == 0 and x["comm_tp"] == 0


def test_few_micro_batches_leave_no_schedule_a_bubble_below_one_micro_batchs_path():
    # m micro-batches over pp stages last at least pp micro-batch times: B >= pp - m
    for schedule in ("1f1b", "interleaved_1f1b", "zbv_zero_bubble", "dualpipev"):
        assert bubble(schedule, 4, 2, 1) == 3
    assert bubble("zbv_zero_bubble", 4, 2, 16) == pytest.approx(0.5)
    assert bubble("interleaved_1f1b", 4, 2, 16) == pytest.approx(1.5)
    assert bubble("1f1b", 1, 1, 1) == 0


def test_host_work_stretches_where_ranks_share_cores():
    c = clusters.load("h100-sxm")
    shared = dataclasses.replace(c, time_share=2.0)
    cfg = _llama({"tp": 2, "pp": 1, "dp": 4, "zero": 3})
    alone, two = features(cfg, c), features(cfg, shared)
    for k in ("calls", "tp_calls", "opt_dtensors", "step"):
        assert two[k] == pytest.approx(2 * alone[k]) and alone[k] > 0
    for k in ("matmul", "comm_tp", "comm_dp3", "optimizer"):  # measured rates carry the sharing
        assert two[k] == alone[k]
    with pytest.raises(ConfigError, match=r"cluster\.time_share"):
        clusters.from_dict({"time_share": 0.5})


@pytest.mark.parametrize(("m", "b", "share"), [(8, 1.0, 1.0), (2, 1.0, 2.0), (1, 3.0, 2.0)])
def test_pipeline_ranks_idle_in_the_bubble_leave_shared_cores_to_the_others(m, b, share):
    # a core per rank: m + B; shared cores: the work itself (m busy-rank times) unless one
    # micro-batch's way through the stages at full speed, (m + B) / share, is longer
    assert m <= span(m, b, share) <= m + b  # never below the work, never above a core each
    assert (span(m, b, share) == m + b) == (share == 1)
    assert span(m, b, share) >= (m + b) / share  # the first micro-batch crosses every stage
    c = clusters.load("h100-sxm")
    cfg = _llama({"tp": 1, "pp": 2, "dp": 4, "zero": 0})
    alone = features(cfg, c)
    two = features(cfg, dataclasses.replace(c, time_share=2.0))
    mb = n_micro(cfg)
    stretch = span(mb, 1.0, 2.0) / span(mb, 1.0, 1.0)  # 1F1B over 2 stages: B = 1
    assert two["matmul"] == pytest.approx(stretch * alone["matmul"]) and stretch < 1
    assert two["pp_hops"] == pytest.approx(2 * stretch * alone["pp_hops"])


def test_fit_holds_every_coefficient_above_its_floor_and_refits_the_rest():
    c = clusters.load("h100-sxm")
    # data that would want an all-reduce of negative time
    true = dict(GPU_PRIOR, comm_dp0=-GPU_PRIOR["comm_dp0"])
    measured = [
        (cfg, sum(true[k] * v for k, v in features(cfg, c).items())) for cfg in _varied_layouts()
    ]
    result = fit(measured, lambda _: c, prior=Coefficients(), prior_weight=1e-4)
    assert result.coeffs.values["comm_dp0"] == pytest.approx(0.05 * GPU_PRIOR["comm_dp0"])
    assert result.mape < 0.05
