"""The model-guided sampler's logic on an in-memory study whose "measurements" come from the
step-time model itself with known coefficients: it must launch in the order the truth ranks
once refitted, and stop once nothing untried can win. Live sweeps: tests/e2e/test_guided.py."""

from __future__ import annotations

import optuna
import pytest
import yaml

from engine.validate import validate
from tests.helpers import REPO, tiny_config
from tuner import space as space_mod
from tuner.config import replace_keys
from tuner.early_stop import EARLY_STOP, PARTIAL_TPS
from tuner.guided import ModelSampler, candidates, require_throughput_first
from tuner.perf import cluster as clusters
from tuner.perf.model import GPU_PRIOR, Coefficients, predict
from tuner.study import LAYOUT_ATTR, RESULT_ATTR

optuna.logging.set_verbosity(optuna.logging.WARNING)
CLUSTER = clusters.load("h100-sxm")
# the "machine": the prior's coefficients, some parts much slower than the prior believes, so
# that the prior ranks the true best far down (checked below)
TRUTH = Coefficients({**GPU_PRIOR, "calls": 2e-3, "comm_dp0": 30.0, "opt_tensors": 1e-3}, "truth")


def _setup(min_fit: int = 3):
    base = tiny_config(parallel={"world_size": 4, "dp": 0}, train={"global_batch": 16})
    layouts = yaml.safe_load((REPO / "conf/space/layouts.yaml").read_text())
    space = space_mod.build(layouts, base)
    cands = candidates(
        space.grid(),
        base,
        runnable=validate,
        cluster_of=lambda _w: CLUSTER,
        layout_key=space_mod.layout_key,
        replace=replace_keys,
        effective=space_mod.effective_params,
    )
    sampler = ModelSampler(seed=0, min_fit_trials=min_fit)
    sampler.bind(space.distributions, cands, prior=Coefficients(), cluster_of=lambda _w: CLUSTER)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    return base, space, cands, sampler, study


def _measure(study, base, space, params) -> float:
    """Record ``params`` as measured on the "machine" (TRUTH), as tuner.sweep records a trial."""
    cfg = validate(replace_keys(base, params))
    step = predict(cfg, CLUSTER, TRUTH)
    result = {"config": cfg.to_dict(), "step_time_s": step.step_time_s}
    result["tokens_per_s"] = step.tokens_per_s
    trial = optuna.trial.create_trial(
        params=params,
        distributions=space.distributions,
        value=step.tokens_per_s,
        user_attrs={RESULT_ATTR: result, LAYOUT_ATTR: space_mod.layout_key(base, params)},
    )
    study.add_trial(trial)
    return step.tokens_per_s


def test_candidates_are_the_distinct_runnable_layouts():
    _, space, cands, _, _ = _setup()
    keys = [c.key for c in cands]
    assert len(keys) == len(set(keys)) > 20
    assert len(cands) < len(space.grid())  # repeats and invalid combinations are gone
    for c in cands:
        validate(c.cfg)  # every one can run


def test_guided_search_finds_the_true_best_and_stops_before_trying_everything():
    base, space, cands, sampler, study = _setup()
    truth = sorted((predict(c.cfg, CLUSTER, TRUTH).tokens_per_s, c.key) for c in cands)[::-1]
    prior_order = [c.key for c, _ in sampler.predicted()]
    assert prior_order.index(truth[0][1]) > 20  # the prior alone would take long to find it
    measured, why = [], None
    for _ in range(len(cands)):
        why = sampler.stop_reason(study)
        if why:
            break
        params = sampler.ranking(study).best.params
        measured.append(_measure(study, base, space, params))
    assert max(measured) == pytest.approx(truth[0][0])
    assert why is not None and "no untried layout can beat" in why
    assert len(measured) < len(cands) / 4


def test_the_prior_ranks_first_and_the_fit_takes_over_after_enough_trials():
    base, space, _, sampler, study = _setup(min_fit=3)
    first = sampler.ranking(study)
    assert first.band is None and first.n_measured == 0
    top = [c for c, _ in sampler.predicted()[:3]]
    assert first.best.key == top[0].key
    for c in top:
        _measure(study, base, space, c.params)
    refit = sampler.ranking(study)
    assert refit.band is not None and refit.n_measured == 3
    assert refit.best.key not in {c.key for c in top}  # measured layouts are not proposed again


def test_model_sampler_needs_throughput_as_first_objective():
    require_throughput_first(["tokens_per_s", "peak_mem_bytes"])
    with pytest.raises(ValueError, match=r"sampler=model.*tokens_per_s"):
        require_throughput_first(["peak_mem_bytes"])


def test_it_does_not_stop_before_every_knob_value_has_been_measured():
    # the left-out error says nothing about a value no measured trial had: until each value of
    # each searched knob (where it takes effect) has been measured once, the search goes on
    base, space, cands, sampler, study = _setup()
    values = {(k, v) for c in cands for k, v in c.knobs.items()}
    assert ("train.precision", "fp32") in values and ("train.precision", "bf16") in values
    why = None
    for _ in range(len(cands)):
        why = sampler.stop_reason(study)
        if why:
            break
        _measure(study, base, space, sampler.ranking(study).best.params)
    assert why is not None
    measured = {c.key: c for c in cands}
    seen = {
        (k, v) for t in study.trials for k, v in measured[t.user_attrs[LAYOUT_ATTR]].knobs.items()
    }
    assert values <= seen


def test_a_trial_stopped_early_is_fitted_with_its_partial_median():
    # stopped because it was slow: what it had measured is still a measurement to learn from
    base, space, cands, sampler, study = _setup(min_fit=3)
    top = [c for c, _ in sampler.predicted()[:3]]
    for c in top[:2]:
        _measure(study, base, space, c.params)
    slow = top[2]
    tps = predict(slow.cfg, CLUSTER, TRUTH).tokens_per_s
    study.add_trial(
        optuna.trial.create_trial(
            params=slow.params,
            distributions=space.distributions,
            state=optuna.trial.TrialState.PRUNED,
            user_attrs={
                LAYOUT_ATTR: slow.key,
                "fail_reason": EARLY_STOP,
                PARTIAL_TPS: tps,
            },
        )
    )
    ranking = sampler.ranking(study)
    assert ranking.n_measured == 3 and ranking.band is not None
    # a trial pruned for any other reason (memory, say) measured nothing
    study.add_trial(
        optuna.trial.create_trial(
            params=cands[-1].params,
            distributions=space.distributions,
            state=optuna.trial.TrialState.PRUNED,
            user_attrs={LAYOUT_ATTR: cands[-1].key, "fail_reason": "memory"},
        )
    )
    assert sampler.ranking(study).n_measured == 3
