"""Trials of dead workers on a real storage: failed once and queued again, found by the
process table on this host and by expired heartbeats from other hosts; and the claim of a
configuration by the lowest-numbered trial."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import REPO
from tests.postgres import postgres_url  # noqa: F401 (a fixture)
from tuner import heartbeat
from tuner.outputs import open_storage
from tuner.recovery import REQUEUE_OF, recover_interrupted
from tuner.study import LAYOUT_ATTR, WORKER_ATTR, worker_id
from tuner.workers import claim_holder


def _study(tmp_path, *, heartbeat_s: int = 0, url: str = "") -> optuna.Study:
    storage = open_storage(
        url, default=tmp_path / "study.db", out_key="sweep.out_dir", heartbeat_s=heartbeat_s
    )
    return optuna.create_study(storage=storage, study_name="s")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request) -> str:
    """The default sqlite file, and a real PostgreSQL server."""
    return "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def _running(study: optuna.Study, *, worker: str, key: str) -> optuna.Trial:
    trial = heartbeat.ask(study, {"x": optuna.distributions.CategoricalDistribution([1, 2])})
    trial.set_user_attr(WORKER_ATTR, worker)
    trial.set_user_attr(LAYOUT_ATTR, key)
    return trial


def test_a_trial_whose_heartbeat_expired_is_failed_once_and_queued_again(tmp_path, storage_url):
    study = _study(tmp_path, heartbeat_s=1, url=storage_url)
    silent = _running(study, worker="elsewhere:1", key="k1")
    heartbeat._heartbeat_storage(study).record_heartbeat(silent._trial_id)  # then it stops
    alive = _running(study, worker="elsewhere:2", key="k2")
    with heartbeat.beating(study, alive._trial_id):
        time.sleep(heartbeat.grace_s(1) + 1.5)
        assert [t.number for t in recover_interrupted(study)] == [silent.number]
        assert recover_interrupted(study) == []  # failed once: nobody queues it twice
    failed = study.trials[silent.number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"] == "interrupted"
    assert "heartbeats" in failed.user_attrs["fail_detail"]
    assert study.trials[alive.number].state == TrialState.RUNNING
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.user_attrs == {REQUEUE_OF: silent.number, LAYOUT_ATTR: "k1"}
    assert queued.system_attrs["fixed_params"] == silent.params


def test_a_dead_worker_on_this_host_is_recovered_without_waiting_for_heartbeats(tmp_path):
    study = _study(tmp_path, heartbeat_s=60)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    gone = _running(study, worker=f"{worker_id().rpartition(':')[0]}:{ended.pid}", key="k")
    mine = _running(study, worker=worker_id(), key="k")
    assert [t.number for t in recover_interrupted(study)] == [gone.number]
    assert study.trials[mine.number].state == TrialState.RUNNING


def test_the_lowest_numbered_trial_claims_a_configuration(tmp_path):
    study = _study(tmp_path)
    first = _running(study, worker=worker_id(), key="k")
    second = _running(study, worker=worker_id(), key="k")
    assert claim_holder(study, "k", first.number) is None
    assert claim_holder(study, "k", second.number).number == first.number
    assert claim_holder(study, "other", second.number) is None


def test_a_claim_waits_for_a_lower_trial_to_publish_its_configuration(tmp_path):
    study = _study(tmp_path)
    first = heartbeat.ask(study, {})
    first.set_user_attr(WORKER_ATTR, worker_id())  # asked for, configuration not yet known
    second = _running(study, worker=worker_id(), key="k")
    timer = threading.Timer(0.5, lambda: first.set_user_attr(LAYOUT_ATTR, "k"))
    timer.start()
    try:
        assert claim_holder(study, "k", second.number).number == first.number
    finally:
        timer.join()


def test_a_missing_postgresql_driver_names_the_extra(tmp_path):
    # the driver made unimportable, as on a machine without the extra
    blocked = "import sys; sys.modules['psycopg'] = None; import tuner.__main__"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    url = "sweep.storage=postgresql+psycopg://u@127.0.0.1:1/x"
    done = subprocess.run(
        [sys.executable, "-c", blocked, "sweep", "model=tiny", url],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "'psycopg' is not installed" in done.stderr and "'.[postgres]'" in done.stderr
