"""Three workers on one PostgreSQL study, one killed mid-trial: every configuration measured
exactly once, the killed worker's trial queued again and measured by another worker, and the
report built from the shared study."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import REPO, cli, wait_until
from tests.postgres import postgres_url  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.long, pytest.mark.timeout(1500)]


def test_three_workers_on_postgresql_survive_a_killed_worker(tmp_path, postgres_url):  # noqa: F811
    name = "shared"
    args = [
        "model=tiny",
        "train.steps=4",
        "train.warmup_steps=1",
        "train.precision=fp32",
        "space.train.micro_batch=[1,2]",  # with parallel.dp in {1, 2}: 4 configurations
        f"sweep.name={name}",
        "sweep.n_trials=4",
        f"sweep.storage={postgres_url}",
        "sweep.heartbeat_s=2",
        "sampler=random",
        "launcher.share_cpus=true",  # three workers on this machine's cores, on purpose
        "launcher.timeout_s=1200",  # three at once on a small machine: no trial may time out
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    workers = []
    for path in logs:
        with path.open("w") as log:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tuner", "sweep", *args],
                    cwd=tmp_path,
                    env=env,
                    stderr=log,
                    stdout=subprocess.DEVNULL,
                )
            )
    by_pid = {w.pid: w for w in workers}
    trials_dir = tmp_path / "reports" / name / "trials"

    def running_trial() -> optuna.trial.FrozenTrial | None:
        """A trial whose ranks have started, run by one of our workers."""
        try:
            study = optuna.load_study(study_name=name, storage=postgres_url)
        except KeyError:  # no worker created the study yet
            return None
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            pid = int(t.user_attrs.get("worker", ":0").rpartition(":")[2])
            if pid in by_pid and (trials_dir / f"{t.number:04d}" / "rank0.log").exists():
                return t
        return None

    try:
        assert wait_until(lambda: running_trial() is not None, timeout_s=300)
        victim = running_trial()
        killed = by_pid[int(victim.user_attrs["worker"].rpartition(":")[2])]
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        survivors = [w for w in workers if w is not killed]
        for w in survivors:
            w.wait(timeout=1200)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    errors = "\n".join(path.read_text()[-3000:] for path in logs)
    assert [w.returncode for w in survivors] == [0, 0], errors

    study = optuna.load_study(study_name=name, storage=postgres_url)
    measured = [
        t
        for t in study.trials
        if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs
    ]
    keys = [t.user_attrs["layout_key"] for t in measured]
    assert len(keys) == len(set(keys)), "a configuration was measured twice"
    assert len(measured) == 4, errors
    lost = study.trials[victim.number]
    assert lost.state == TrialState.FAIL and lost.user_attrs["fail_reason"] == "interrupted"
    again = [t for t in measured if t.user_attrs["layout_key"] == victim.user_attrs["layout_key"]]
    assert again and again[0].user_attrs["worker"] != victim.user_attrs["worker"]
    assert {t.user_attrs["worker"] for t in study.trials} >= {
        t.user_attrs["worker"] for t in measured
    }

    report = cli("report", *args, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    with (tmp_path / "reports" / name / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(study.trials)
    assert rows[victim.number]["fail_reason"] == "interrupted"
    complete = [r for r in rows if r["state"] == "COMPLETE" and not r["duplicate_of"]]
    assert sorted(float(r["load_1min"]) >= 0 for r in complete) == [True] * 4
