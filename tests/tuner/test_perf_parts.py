"""The step's measured parts in the model's fit (tuner.perf.parts): each feature's time
distributed over the parts, and coefficients fitted to the parts as well as to the total."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from engine.config import RunConfig
from tests.helpers import REPO, tiny_config
from tuner.perf import cluster as clusters
from tuner.perf.features import FEATURES, features
from tuner.perf.model import GPU_PRIOR, Coefficients, fit
from tuner.perf.parts import PARTS, measured, split
from tuner.planner.calibration import MeasuredStep

LLAMA_7B = yaml.safe_load((REPO / "conf/model/llama-7b.yaml").read_text())


def _layouts(*, tp: bool = True) -> list[RunConfig]:
    shapes = ((8, 1, 1), (4, 2, 1), (2, 4, 1), (2, 2, 2), (4, 1, 2), (2, 1, 4))
    return [
        tiny_config(
            model=LLAMA_7B,
            parallel={"dp": dp, "tp": t, "pp": pp, "zero": zero},
            train={"global_batch": 256, "micro_batch": mb, "precision": precision},
        )
        for dp, t, pp in shapes
        if tp or t == 1
        for zero in (0, 2, 3)
        for mb in (1, 4)
        for precision in ("bf16", "fp32")
    ]


def _measure(cfg: RunConfig, c: clusters.Cluster, true: dict[str, float]):
    """The step and its parts as the model with coefficients ``true`` has them."""
    shares = split(cfg, c)
    parts = {p: sum(true[k] * v for k, v in shares[p].items()) for p in PARTS}
    return (cfg, sum(parts.values())), parts


def test_a_features_shares_of_the_parts_add_up_to_it():
    c = clusters.load("h100-sxm")
    for cfg in _layouts():
        x, shares = features(cfg, c), split(cfg, c)
        for k in FEATURES:
            assert sum(shares[p][k] for p in PARTS) == pytest.approx(x[k], rel=1e-9, abs=1e-15)
        if cfg.parallel.pp > 1:  # a pipeline waits: some of its compute features are bubble
            assert shares["bubble"]["matmul"] > 0
        else:
            assert shares["bubble"]["matmul"] == 0


def test_fit_to_the_parts_recovers_the_coefficients_that_generated_them():
    c = clusters.load("h100-sxm")
    true = {k: v * (1.5 if i % 2 else 0.7) for i, (k, v) in enumerate(GPU_PRIOR.items())}
    pairs = [_measure(cfg, c, true) for cfg in _layouts()]
    result = fit(
        [m for m, _ in pairs],
        lambda _: c,
        prior=Coefficients(),
        prior_weight=1e-6,
        parts=[p for _, p in pairs],
    )
    assert result.mape < 1e-3
    for k in ("matmul", "matmul_small", "elementwise", "comm_tp", "comm_dp0", "optimizer"):
        assert result.coeffs.values[k] == pytest.approx(true[k], rel=1e-2), k


def test_parts_separate_what_the_total_confounds():
    # time the model has no feature for, exposed communication that grows with the
    # parameters as the optimizer's time does: fitted to totals, the optimizer's coefficient
    # soaks it up; fitted to the parts as well, it follows the measured optimizer time
    c = clusters.load("h100-sxm")
    steps, parts = [], []
    for cfg in _layouts(tp=False):
        (_, total), p = _measure(cfg, c, GPU_PRIOR)
        unmodelled = 3 * GPU_PRIOR["optimizer"] * features(cfg, c)["optimizer"]
        p["comm_exposed"] += unmodelled
        steps.append((cfg, total + unmodelled))
        parts.append(p)
    kw = {"prior": Coefficients(), "prior_weight": 1e-3}
    with_parts = fit(steps, lambda _: c, parts=parts, part_weight=4.0, **kw)
    total_only = fit(steps, lambda _: c, part_weight=0.0, **kw)
    true = GPU_PRIOR["optimizer"]
    assert with_parts.coeffs.values["optimizer"] == pytest.approx(true, rel=0.1)
    assert total_only.coeffs.values["optimizer"] > 1.5 * true


def test_a_part_the_measurements_do_not_exercise_keeps_its_prior():
    c = clusters.load("h100-sxm")
    true = {k: 2 * v for k, v in GPU_PRIOR.items()}
    pairs = [_measure(cfg, c, true) for cfg in _layouts(tp=False)]  # no tensor parallelism
    result = fit(
        [m for m, _ in pairs], lambda _: c, prior=Coefficients(), parts=[p for _, p in pairs]
    )
    for k in ("comm_tp", "tp_calls"):
        assert result.coeffs.values[k] == pytest.approx(GPU_PRIOR[k])
    assert result.coeffs.values["matmul"] == pytest.approx(true["matmul"], rel=0.05)


def _result(per_rank: list[dict[str, float]], step: float) -> dict:
    cfg = tiny_config(parallel={"pp": 2})
    return {"config": cfg.to_dict(), "step_time_s": step, "breakdown_per_rank": per_rank}


def test_measured_parts_are_the_busiest_ranks_scaled_to_the_step_time():
    idle = {"forward": 0.1, "backward": 0.2, "optimizer": 0.05, "comm_exposed": 0.05}
    busy = {"forward": 0.3, "backward": 0.4, "optimizer": 0.05, "comm_exposed": 0.05}
    r = _result([{**idle, "bubble": 0.5, "data": 0.1}, {**busy, "bubble": 0.1, "data": 0.1}], 2.0)
    parts = measured(r)
    assert parts is not None
    assert sum(parts.values()) == pytest.approx(2.0)
    assert parts["compute"] == pytest.approx(0.7 * 2.0)  # the second rank's, out of 1.0 s
    assert parts["bubble"] == pytest.approx(0.1 * 2.0)
    step = MeasuredStep.of(r)
    assert step.step_time_s == 2.0 and step.parts == parts
    assert measured(_result([], 2.0)) is None  # no profiled step: nothing to fit the parts to
    assert np.isfinite(list(parts.values())).all()


def test_data_parallel_calls_are_the_collectives_calls_and_grow_with_the_zero_stage():
    from engine.metrics.volumes import collectives

    c = clusters.load("h100-sxm")
    calls = {}
    for zero in (0, 2, 3):
        cfg = tiny_config(
            model=LLAMA_7B,
            parallel={"dp": 4, "tp": 2, "zero": zero},
            train={"global_batch": 64, "micro_batch": 2},
        )
        calls[zero] = features(cfg, c)["dp_calls"]
        dp = [x for x in collectives(cfg, 0, backend=c.backend) if x.group == "dp"]
        assert calls[zero] == pytest.approx(sum(x.count for x in dp) * c.time_share)
    # FSDP gathers every unit once per micro-batch (twice under ZeRO-3); DDP one bucket set
    assert calls[0] < calls[2] < calls[3]
