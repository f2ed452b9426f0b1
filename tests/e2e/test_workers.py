"""Several workers on one study: no configuration measured twice, no trial over the budget,
and no two workers proposing in lockstep."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.long]  # real sweeps or timed delays: minutes


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a core per worker")
def test_two_workers_share_a_sweep_without_measuring_anything_twice(tmp_path):
    args = [
        sys.executable,
        "-m",
        "tuner",
        "sweep",
        "model=tiny",
        "train.steps=4",
        "train.warmup_steps=1",
        "sweep.name=shared",
        "sweep.n_trials=4",
        "sampler=random",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    workers = [  # each on its own core: on shared cores the second would refuse to start
        subprocess.Popen(
            [*args, f"launcher.cpus={cpu}"],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cpu in sorted(os.sched_getaffinity(0))[:2]
    ]
    errors = [w.communicate(timeout=600)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    study = optuna.load_study(
        study_name="shared", storage=f"sqlite:///{tmp_path}/reports/shared/study.db"
    )
    measured = [
        t
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and "duplicate_of" not in t.user_attrs
    ]
    keys = [t.user_attrs["layout_key"] for t in measured]
    assert len(keys) == len(set(keys)), "a configuration was measured twice"
    assert len(measured) == 4, [t.user_attrs.get("fail_reason") for t in study.trials]
    by_worker: dict[str, list[str]] = {}
    for t in sorted(study.trials, key=lambda t: t.number):
        by_worker.setdefault(t.user_attrs["worker"], []).append(str(t.params))
    assert len(by_worker) == 2
    first, second = by_worker.values()
    assert first[0] != second[0]  # different seeds: not the same first proposal
