"""Where a sweep writes: checked before the first trial (one line, exit status 2), files that
follow the umask, and a report that shows a trial whose worker died without changing the study."""

from __future__ import annotations

import importlib.util
import os
import socket
import stat
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from tuner.cli import main
from tuner.report import write_report
from tuner.report.frame import DEAD_WORKER_STATE, trials_frame
from tuner.study import WORKER_ATTR, worker_id

SWEEP = ["sweep", "model=tiny", "sweep.name=t", "sweep.n_trials=1"]
_NO_PSYCOPG = importlib.util.find_spec("psycopg") is None


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:"), lines
    return lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["sweep.storage=foo://bar"], ["sweep.storage", "'foo'", "journal:PATH"]),
        (
            ["sweep.storage=postgresql://u@127.0.0.1:1/x"],
            ["sweep.storage", "127.0.0.1", *(["psycopg", "pip install"] if _NO_PSYCOPG else [])],
        ),
        (["sweep.storage=sqlite:////nonexistent/dir/x.db"], ["sweep.storage", "/nonexistent/dir"]),
        (["sweep.storage=journal:/proc/nonexistent/j.log"], ["sweep.storage", "/proc/nonexistent"]),
        (["sweep.out_dir=/proc/nonexistent"], ["sweep.out_dir=/proc/nonexistent"]),
        (["sweep.out_dir=/proc/version"], ["sweep.out_dir=/proc/version"]),  # a file, read-only
    ],
)
def test_unusable_storage_or_output_stops_before_the_first_trial(
    tmp_path, monkeypatch, capsys, args, words
):
    monkeypatch.chdir(tmp_path)
    assert main([*SWEEP, *args]) == 2
    line = _one_error_line(capsys)
    for word in words:
        assert word in line, line
    assert not list(tmp_path.rglob("trials")), "a trial was started"
    assert not os.path.exists("/nonexistent"), "a folder of a sqlite URL was created"


def test_unwritable_run_out_stops_before_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "model=tiny", "run.out=/proc/nonexistent/r.json"]) == 2
    assert "run.out=/proc/nonexistent/r.json" in _one_error_line(capsys)
    assert not list(tmp_path.rglob("runs")), "the run was launched"


def test_report_files_follow_the_umask(tmp_path, study):
    old = os.umask(0o077)
    try:
        write_report(study, tmp_path)
    finally:
        os.umask(old)
    for name in ("report.html", "trials.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert not list(tmp_path.glob(".*.tmp"))


def test_report_shows_a_running_trial_whose_worker_died_without_changing_it(tmp_path):
    study = optuna.create_study(study_name="s", direction="maximize")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is now that of no process on this host
    dist = {"parallel.dp": CategoricalDistribution([1, 2])}
    dead = study.ask(dist)
    dead.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{gone.pid}")
    alive = study.ask(dist)
    alive.set_user_attr(WORKER_ATTR, worker_id())

    df = trials_frame(study).set_index("number")
    assert df.loc[dead.number, "state"] == DEAD_WORKER_STATE
    assert df.loc[dead.number, "fail_reason"] == "interrupted"
    assert str(gone.pid) in df.loc[dead.number, "fail_detail"]
    assert df.loc[alive.number, "state"] == "RUNNING"
    html = write_report(study, tmp_path).read_text()
    assert DEAD_WORKER_STATE in html
    # reporting only shows it: the study is left as it was
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.RUNNING]
    assert "fail_reason" not in study.get_trials()[0].user_attrs
