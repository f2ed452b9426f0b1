"""The main job end to end: real sweeps of real multi-process runs, resumed and reported."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import optuna
import pytest

from tests.helpers import REPO, cli, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.long]  # real sweeps or timed delays: minutes
FAST = ["model=tiny", "train.steps=5", "train.warmup_steps=1"]


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def _study(tmp_path, name):
    return optuna.load_study(
        study_name=name, storage=f"sqlite:///{tmp_path}/reports/{name}/study.db"
    )


def test_sweep_writes_report_and_csv_then_resumes_without_rerunning(tmp_path):
    args = ["sweep", *FAST, "sweep.name=e2e", "sweep.n_trials=3"]
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "reports" / "e2e"
    html = (out / "report.html").read_text()
    assert "Pareto front" in html and "python -m tuner run" in html
    assert '<script src="http' not in html  # self-contained: opens offline
    rows = _rows(out / "trials.csv")
    measured = [r for r in rows if not r["duplicate_of"]]
    assert len(measured) == 3 and all(r["state"] == "COMPLETE" for r in measured)
    for col in (
        "number",
        "state",
        "parallel.dp",
        "train.micro_batch",
        "train.precision",
        "tokens_per_s",
        "step_time_s",
        "peak_mem_bytes",
        "comm_bytes",
        "comm_time_s",
        "mfu",
    ):
        assert col in rows[0], col
    for r in measured:  # the fixed cost: the wall time less the timed steps
        assert 0 < float(r["overhead_s"]) < float(r["duration_s"])
    for r in measured:  # every trial's metrics are its own measured run's
        result = json.loads(
            (out / "trials" / f"{int(r['number']):04d}" / "result.json").read_text()
        )
        assert float(r["tokens_per_s"]) == pytest.approx(result["tokens_per_s"])
        assert int(r["parallel.dp"]) == result["config"]["parallel"]["dp"]
        assert (float(r["comm_bytes"]) > 0) == (result["config"]["parallel"]["dp"] > 1)
    assert "[  3/3 " in proc.stderr  # progress display

    # same command again: nothing re-run, nothing lost
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(_study(tmp_path, "e2e").trials) == len(rows)

    # one more trial asked for: exactly one more configuration measured
    more = cli(*args[:-1], "sweep.n_trials=4", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    rows = _rows(out / "trials.csv")
    assert len([r for r in rows if not r["duplicate_of"]]) == 4

    # resuming with other fixed settings would mix measurements: refused
    other = cli("sweep", *FAST, "train.global_batch=16", "sweep.name=e2e", cwd=tmp_path)
    assert other.returncode == 2 and "train.global_batch" in other.stderr


def test_failed_trials_are_recorded_with_reason_and_the_sweep_goes_on(tmp_path):
    proc = cli(
        "sweep",
        *FAST,
        "sweep.name=faults",
        "sweep.n_trials=3",
        "sampler=bruteforce",
        "~space.train",
        "~space.parallel",
        "+space.debug.fail_at_step=[-1,2]",
        "+space.debug.nan_at_step=[-1,3]",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {
        (r["debug.fail_at_step"], r["debug.nan_at_step"]): r
        for r in _rows(tmp_path / "reports" / "faults" / "trials.csv")
    }
    assert len(rows) == 3
    for (fail, nan), row in rows.items():
        if fail == "2":
            assert (row["state"], row["fail_reason"]) == ("FAIL", "crash")
            assert "injected failure" in row["fail_detail"]
        elif nan == "3":
            assert (row["state"], row["fail_reason"]) == ("FAIL", "nan")
        else:
            assert row["state"] == "COMPLETE"
        assert os.path.isdir(row["log_dir"])
    html = (tmp_path / "reports" / "faults" / "report.html").read_text()
    assert "injected failure" in html


def test_timeout_and_infeasible_layouts(tmp_path):
    proc = cli(
        "sweep",
        *FAST,
        "sweep.name=limits",
        "sweep.n_trials=2",  # more than can run: every configuration is tried
        "sampler=bruteforce",
        "space.parallel.dp=[1,3]",
        "space.train.micro_batch=[2]",
        "~space.train.precision",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = _rows(tmp_path / "reports" / "limits" / "trials.csv")
    # global_batch 8 cannot be split over 3 ranks: pruned before launch, with the reason
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    assert [r["parallel.dp"] for r in pruned] == ["3"]
    for r in pruned:
        assert r["fail_reason"] == "infeasible" and "train.global_batch" in r["fail_detail"]
        assert not (tmp_path / "reports" / "limits" / "trials" / f"{int(r['number']):04d}").exists()
    assert [r["parallel.dp"] for r in rows if r["state"] == "COMPLETE"] == ["1"]

    slow = cli(
        "sweep", *FAST, "sweep.name=slow", "sweep.n_trials=1", "launcher.timeout_s=1", cwd=tmp_path
    )
    assert slow.returncode == 0, slow.stderr
    row = _rows(tmp_path / "reports" / "slow" / "trials.csv")[0]
    assert (row["state"], row["fail_reason"]) == ("FAIL", "timeout")


def test_interrupted_sweep_resumes_and_reruns_the_interrupted_trial(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = [
        sys.executable,
        "-m",
        "tuner",
        "sweep",
        *FAST,
        "sweep.name=intr",
        "sweep.n_trials=2",
        "train.steps=30",
        "sweep.early_stop=false",  # both trials complete
    ]
    # Ctrl-C as a terminal delivers it, even where this test runs in the background (a shell
    # starts background jobs with SIGINT ignored, which the sweep would inherit)
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    started = tmp_path / "reports" / "intr" / "trials" / "0000" / "rank0.log"
    assert wait_until(started.exists, timeout_s=60)
    proc.send_signal(signal.SIGINT)  # Ctrl-C in the middle of trial 0
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    first = _study(tmp_path, "intr").trials[0]
    assert first.state.name == "FAIL" and first.user_attrs["fail_reason"] == "interrupted"

    done = cli(*args[3:], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trials = _study(tmp_path, "intr").trials
    complete = [
        t for t in trials if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs
    ]
    assert len(complete) == 2
    assert any(t.params == first.params for t in complete)  # the interrupted layout was measured


def test_resume_on_another_machine_is_refused_unless_allowed(tmp_path):
    args = ["sweep", *FAST, "sweep.name=where", "space.parallel.dp=[1]"]
    first = cli(*args, "sweep.n_trials=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "measuring on " in first.stderr
    study = _study(tmp_path, "where")
    ((mid, record),) = study.user_attrs["machines"].items()
    assert study.trials[0].user_attrs["machine"] == mid
    assert record["cores"] == len(os.sched_getaffinity(0)) and record["torch"]
    # the study as another machine would have left it: other host, other core count
    other = {**record, "host": "elsewhere", "cores": record["cores"] + 62}
    study.set_user_attr("machines", {"0123456789": other})
    n_before = len(study.trials)

    refused = cli(*args, "sweep.n_trials=2", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    line = refused.stderr.strip()
    assert line.startswith("error:") and "\n" not in line
    assert "elsewhere" in line and "cores" in line and "sweep.allow_other_machine" in line
    study = _study(tmp_path, "where")
    assert len(study.trials) == n_before  # nothing launched, nothing left RUNNING

    allowed = cli(*args, "sweep.n_trials=2", "sweep.allow_other_machine=true", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    study = _study(tmp_path, "where")
    assert set(study.user_attrs["machines"]) == {"0123456789", mid}
    html = (tmp_path / "reports" / "where" / "report.html").read_text()
    assert "Measured on 2 machines" in html and "elsewhere" in html


def test_command_line_value_beats_the_space_and_resume_rules_hold(tmp_path):
    # the default space searches train.precision; the user's fp16 wins and is reported as fixed
    args = ["sweep", *FAST, "train.precision=fp16", "sweep.name=fixprec", "sweep.n_trials=1"]
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "train.precision=fp16 fixed by the command line; not searched" in proc.stderr
    out = tmp_path / "reports" / "fixprec"
    study = _study(tmp_path, "fixprec")
    (trial,) = study.trials
    assert "train.precision" not in trial.params
    config = json.loads((out / "trials" / "0000" / "config.json").read_text())
    result = json.loads((out / "trials" / "0000" / "result.json").read_text())
    assert config["train"]["precision"] == result["config"]["train"]["precision"] == "fp16"
    assert "train.precision=fp16" in study.user_attrs["base_overrides"]
    fixed = (out / "report.html").read_text().split("Fixed for the whole sweep:")[1]
    assert "train.precision=fp16" in fixed.split("</p>")[0]
    assert study.metric_names == ["tokens_per_s"]  # names for optuna-dashboard

    again = cli(*args, cwd=tmp_path)  # nothing left to do: says so, runs nothing
    assert again.returncode == 0, again.stderr
    assert "1/1 trials done; raise sweep.n_trials to add more" in again.stderr
    assert len(_study(tmp_path, "fixprec").trials) == 1

    # same keys, other choices: refused in one line, nothing written, nothing left RUNNING
    changed = cli(*args[:-1], "sweep.n_trials=5", "space.train.micro_batch=[1,2]", cwd=tmp_path)
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    line = changed.stderr.strip()
    assert line.startswith("error:") and "\n" not in line and "space.train.micro_batch" in line
    study = _study(tmp_path, "fixprec")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]


def test_layout_sweep_progress_shows_derived_dp_and_no_idle_knobs(tmp_path):
    proc = cli(
        "sweep",
        *FAST,
        "+experiment=layouts",
        "sweep.name=lay",
        "sweep.n_trials=1",
        "space.parallel.tp=[2]",
        "space.parallel.pp=[1]",  # pp_schedule stays searched: no effect without a pipeline
        "space.parallel.zero=[0]",
        "space.train.micro_batch=[2]",
        "~space.train.precision",
        "~space.train.activation_checkpointing",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dp derived per trial: world_size 4 / (tp * pp)" in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[")]
    assert lines and all(len(ln) <= 120 for ln in lines), lines
    measured = [ln for ln in lines if " ok " in ln]
    assert measured == [measured[0]] and "dp2 · DDP · tp2 · pp1 · mb2 · " in measured[0]
    # one stage per rank states nothing; the schedule does nothing without a pipeline
    assert "×" not in measured[0], measured
    assert not any(s in ln for ln in lines for s in ("gpipe", "1f1b", "zbv")), lines
