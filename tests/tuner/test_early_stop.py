"""Early stopping's rule, its Optuna pruner and the progress files it reads (no processes)."""

from __future__ import annotations

import sys
import time

import optuna
import pandas as pd
import pytest
from optuna.pruners import NopPruner
from optuna.trial import TrialState

from engine.config import ConfigError, RunConfig
from engine.launch import POLL_S, launch
from engine.metrics.stats import median_ci
from engine.progress_log import ProgressLog, progress_path, step_times
from engine.results import timed_steps, tokens_per_step
from tests.helpers import engine_pids
from tests.tuner.report_helpers import _add, _p
from tuner.config import load
from tuner.early_stop import (
    EARLY_STOP,
    PARTIAL_CI,
    PARTIAL_STEPS,
    PARTIAL_TPS,
    SlowerThanBest,
    Watch,
    best_complete,
    make_pruner,
    unused,
    verdict,
)
from tuner.report import PARTIAL_COLUMNS, leaderboard, trials_frame

SLOW = [100.0, 104.0, 98.0, 101.0, 99.0]


def test_no_verdict_before_min_steps_or_without_a_completed_trial():
    assert verdict(SLOW[:3], best=(0, 1000.0), min_steps=4) is None
    assert verdict(SLOW, best=None, min_steps=4) is None


def test_stops_when_the_optimistic_end_is_below_the_best_median():
    found = verdict(SLOW, best=(3, 1000.0), min_steps=4)
    assert found is not None
    ci = median_ci(SLOW)
    assert found.partial == ci and found.best_number == 3
    assert found.reason == (
        f"slower than trial 3 (optimistic {ci.high:,.0f} tok/s < median 1,000 tok/s "
        f"after {len(SLOW)} steps)"
    )


def test_goes_on_while_the_interval_reaches_the_best_median():
    ci = median_ci(SLOW)
    assert verdict(SLOW, best=(0, ci.high), min_steps=4) is None  # equal: it might still tie
    assert verdict(SLOW, best=(0, ci.high * 1.001), min_steps=4) is not None


def test_one_fast_step_keeps_a_slow_trial_going():
    # the interval of few steps reaches their maximum: an outlier upwards is given the benefit
    noisy = [*SLOW[:3], 2000.0]
    assert verdict(noisy, best=(0, 1000.0), min_steps=4) is None


def _study(min_steps: int = 2) -> optuna.Study:
    return optuna.create_study(direction="maximize", pruner=SlowerThanBest(min_steps))


def test_the_pruner_compares_with_the_best_complete_trial_in_the_storage():
    study = _study()
    for value in (500.0, 900.0):
        study.tell(study.ask(), value)
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    assert best_complete(study) == (1, 900.0)
    slow, fast = study.ask(), study.ask()
    for step, value in enumerate(SLOW):
        slow.report(value, step)
        fast.report(value * 10, step)
    assert slow.should_prune() and not fast.should_prune()


def test_no_pruning_before_a_trial_completes():
    study = _study()
    trial = study.ask()
    for step, value in enumerate(SLOW):
        trial.report(value, step)
    assert not trial.should_prune()


def test_pruner_only_for_tokens_per_s_alone_and_when_enabled():
    assert isinstance(
        make_pruner(enabled=True, min_steps=4, objectives=["tokens_per_s"]), SlowerThanBest
    )
    for enabled, objectives in ((False, ["tokens_per_s"]), (True, ["tokens_per_s", "mfu"])):
        pruner = make_pruner(enabled=enabled, min_steps=4, objectives=objectives)
        assert isinstance(pruner, NopPruner)


def test_step_times_are_the_slowest_rank_of_the_steps_every_rank_reported(tmp_path):
    logs = [ProgressLog(str(tmp_path), rank=r) for r in range(2)]
    for step, (a, b) in enumerate([(0.1, 0.3), (0.2, 0.1)]):
        logs[0].append(step, a)
        logs[1].append(step, b)
    logs[0].append(2, 0.5)  # rank 1 has not finished step 2 yet
    with progress_path(tmp_path, 1).open("a") as f:
        f.write("2\t0.")  # a line being written
    assert step_times(tmp_path, 2) == {0: 0.3, 1: 0.2}
    for log in logs:
        log.close()
    assert step_times(tmp_path / "none", 2) == {}


def test_a_run_without_a_progress_folder_writes_nothing(tmp_path):
    log = ProgressLog("", rank=0)
    log.append(0, 1.0)
    log.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fast", [True, False])
def test_the_watch_reports_timed_steps_and_stops_a_slower_trial(tmp_path, fast):
    cfg = RunConfig()
    cfg.train.steps, cfg.train.warmup_steps, cfg.measure.profile_steps = 10, 2, 2
    timed = timed_steps(cfg)[0]
    best_tps = 1000.0
    seconds = tokens_per_step(cfg) / (best_tps * (2 if fast else 0.5))
    study = _study(min_steps=4)
    study.tell(study.ask(), best_tps)
    trial = study.ask()
    watch = Watch(study, trial, min_steps=4)
    poll = watch.poll_for(cfg, tmp_path)
    log = ProgressLog(str(tmp_path), rank=0)
    stopped_at = None
    for step in range(cfg.train.steps):
        log.append(step, seconds)
        if poll():
            stopped_at = step
            break
    log.close()
    reported = study.trials[1].intermediate_values
    if fast:
        assert stopped_at is None and watch.verdict is None
        assert len(reported) == len(timed)  # warmup and profiled steps are not reported
    else:
        assert stopped_at == timed[3] and len(reported) == 4
        assert watch.verdict is not None and watch.verdict.best_number == 0
        assert watch.verdict.partial.median == pytest.approx(best_tps * 0.5)


def test_the_sweep_settings_make_the_study_s_pruner():
    cfg = load(["sweep.early_stop_min_steps=6"])
    assert cfg.sweep.early_stop  # on by default
    pruner = make_pruner(
        enabled=cfg.sweep.early_stop,
        min_steps=cfg.sweep.early_stop_min_steps,
        objectives=cfg.sweep.objectives,
    )
    assert isinstance(pruner, SlowerThanBest) and pruner.min_steps == 6


def test_a_bad_min_steps_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"sweep\.early_stop_min_steps"):
        load(["sweep.early_stop_min_steps=0"])


def test_the_launcher_ends_every_rank_when_its_poll_says_stop(tmp_path):
    calls = []

    def poll() -> bool:
        calls.append(time.monotonic())
        return len(calls) >= 2

    before = engine_pids()
    t0 = time.monotonic()
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    launched = launch(sleeper, nproc=2, log_dir=tmp_path, timeout_s=60, poll=poll)
    assert launched.stopped and not launched.timed_out and not launched.ok
    assert launched.returncodes == [None, None]  # ended by the launcher
    assert time.monotonic() - t0 < 30 and len(calls) == 2
    assert calls[1] - calls[0] >= POLL_S * 0.9
    assert engine_pids() <= before


def test_the_report_shows_a_trial_stopped_early_with_its_partial_figures():
    study = optuna.create_study(direction="maximize")
    _add(study, TrialState.COMPLETE, _p(1, 8), tps=1000.0, tokens_per_s_ci=[950.0, 1050.0])
    found = verdict(SLOW, best=(0, 1000.0), min_steps=4)
    ci = found.partial
    partial = {PARTIAL_STEPS: ci.n, PARTIAL_TPS: ci.median, PARTIAL_CI: [ci.low, ci.high]}
    early = {"fail_reason": EARLY_STOP, "fail_detail": found.reason, **partial}
    _add(study, TrialState.PRUNED, _p(2, 1), **early)
    _add(study, TrialState.PRUNED, _p(4, 8), fail_reason="memory", fail_detail="too big")
    df = trials_frame(study)
    assert df[list(PARTIAL_COLUMNS)].iloc[[0, 2]].isna().all().all()
    assert df.loc[1, list(PARTIAL_COLUMNS)].tolist() == [ci.n, ci.median, ci.low, ci.high]
    board = leaderboard(df)
    assert board["number"].tolist() == [0, 1]  # the layout pruned before launch is left out
    row = board.iloc[1]
    assert pd.isna(row["rank"]) and row["state"].startswith("PRUNED early, partial figures: ")
    assert found.reason in row["state"]
    assert [row["tokens_per_s"], row["tokens_per_s_ci_low"], row["tokens_per_s_ci_high"]] == [
        ci.median,
        ci.low,
        ci.high,
    ]


def test_says_why_early_stopping_asked_for_does_nothing():
    def why(**kw):
        return unused(
            **{"enabled": True, "objectives": ["tokens_per_s"], "launcher": "local", **kw}
        )

    assert why() is None and why(enabled=False) is None
    assert "sweep.objectives=[tokens_per_s]" in why(objectives=["tokens_per_s", "mfu"])
    assert "launcher=slurm" in why(launcher="slurm")


def test_a_trial_stopped_early_counts_toward_the_budget_and_is_not_run_again():
    from tuner.sweep import _counts, _decided

    study = optuna.create_study(direction="maximize")
    _add(study, TrialState.PRUNED, _p(2, 1), fail_reason=EARLY_STOP, fail_detail="slower")
    _add(study, TrialState.PRUNED, _p(4, 8), fail_reason="memory", fail_detail="too big")
    early, infeasible = study.get_trials(deepcopy=False)
    assert _counts(early) and _decided(early)  # launched, and its layout settled
    assert not _counts(infeasible) and _decided(infeasible)  # never launched
