"""Cores and GPUs per worker: ranges, pinning, refusal beside a worker on the same cores, GPU
holds between trials, and the busy-machine flag."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from engine.config import ConfigError
from tests.helpers import REPO
from tuner.config import load
from tuner.placement import CORES_ATTR, LOAD_ATTR, holding_gpus, parse_ids, ranges
from tuner.report.frame import busy_trials, trials_frame

# a worker process: claim launcher.cpus, report what its ranks would get, then hold the cores
_WORKER = """
import os, sys, time
from engine.launch import rank_env
from tuner.config import load
from tuner.placement import worker_cores
with worker_cores(load(sys.argv[1:])):
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    print(cores, rank_env(rank=0, nproc=1, port=1)["OMP_NUM_THREADS"], flush=True)
    time.sleep(60)
"""


def test_ids_parse_as_ranges_and_print_back():
    assert parse_ids("0-2,5,4", key="launcher.cpus") == [0, 1, 2, 4, 5]
    assert parse_ids("", key="launcher.cpus") == []
    assert ranges([0, 1, 2, 4, 5]) == "0-2,4-5"
    with pytest.raises(ConfigError, match=r"launcher\.cpus"):
        parse_ids("3-1", key="launcher.cpus")
    with pytest.raises(ConfigError, match=r"launcher\.devices"):
        load(["launcher.devices=a"])


def _worker(tmp_path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, f"launcher.lock_dir={tmp_path}", *overrides],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to split")
def test_workers_take_their_own_cores_and_refuse_to_share_them(tmp_path):
    first = _worker(tmp_path, "launcher.cpus=0")
    try:
        # pinned to core 0, so each of its ranks gets one thread
        assert first.stdout.readline().split() == ["0", "1"]
        second = _worker(tmp_path, "launcher.cpus=1")
        try:
            assert second.stdout.readline().split() == ["1", "1"]
        finally:
            second.kill()
            second.wait()
        clash = _worker(tmp_path, "launcher.cpus=0-1")
        _, err = clash.communicate(timeout=120)
        assert clash.returncode != 0
        assert "core 0 is taken by worker" in err and f":{first.pid} " in err, err
        shared = _worker(tmp_path, "launcher.cpus=0-1", "launcher.share_cpus=true")
        try:
            assert shared.stdout.readline().split() == ["0,1", "2"]
        finally:
            shared.kill()
            shared.wait()
    finally:
        first.kill()
        first.wait()


def test_a_trial_waits_for_the_gpus_another_trial_holds(tmp_path, monkeypatch):
    cfg = load([f"launcher.lock_dir={tmp_path}"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    order = []
    with holding_gpus(cfg, 2, what="trial 0"):

        def second() -> None:
            with holding_gpus(cfg, 1, what="trial 1"):
                order.append("trial 1 started")

        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(1.0)
        order.append("trial 0 ended")
    waiter.join(timeout=10)
    assert order == ["trial 0 ended", "trial 1 started"]
    assert sorted(p.name for p in tmp_path.rglob("gpu*.lock")) == ["gpu3.lock", "gpu5.lock"]


def test_trials_started_on_a_busy_machine_are_flagged():
    study = optuna.create_study()
    for load_1min in (0.5, 9.0, None):
        attrs = {} if load_1min is None else {LOAD_ATTR: load_1min, CORES_ATTR: 4}
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs=attrs))
    df = trials_frame(study)
    assert df["busy"].isna().tolist() == [False, False, True]  # no load recorded: unknown
    assert df["busy"].tolist()[:2] == [False, True]
    assert busy_trials(df) == [1]
